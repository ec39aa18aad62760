"""The command-line edge: one module per `config.mode`, each with `validate(config)` and `run(config, workdir)`."""

from __future__ import annotations

import logging
import os

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
    cache = compilation_cache_dir(config.compilation_cache_dir, workdir, os.environ)
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
    logging.info("devices: %s; XLA compilation cache: %s", jax.devices(), cache or "off")
    return parallel.make_mesh(config.mesh.data, config.mesh.fsdp)


def compilation_cache_dir(setting: str, workdir: epath.Path, environ) -> str:
    """Where JAX keeps compiled programs between runs and between the many trainings of one run (mode=lomo trains
    the same step per fold): $JAX_COMPILATION_CACHE_DIR when set, else `setting` (relative = under the workdir,
    "" = off). A cache hit skips XLA's compile, which is most of a short CPU run."""
    if environ.get("JAX_COMPILATION_CACHE_DIR"):
        return environ["JAX_COMPILATION_CACHE_DIR"]
    if not setting:
        return ""
    return os.fspath(epath.Path(setting) if os.path.isabs(setting) or "://" in setting else workdir / setting)
