"""The command-line edge: one module per `config.mode`, each with `validate(config)` and `run(config, workdir)`."""

from __future__ import annotations

import logging

import jax
import ml_collections
from etils import epath

from lmc_jax import parallel
from lmc_jax.errors import UserError


def start(config: ml_collections.ConfigDict, workdir: epath.Path | None, outputs: str) -> jax.sharding.Mesh:
    """What every mode writing into --workdir does first: refuse a missing --workdir (naming what goes there),
    join the other processes of a multi-host job, log the devices; returns the mesh of config.mesh."""
    if workdir is None:
        raise UserError(f"mode={config.mode} needs --workdir ({outputs})")
    parallel.maybe_initialize_distributed(config)
    logging.info("devices: %s", jax.devices())
    return parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
