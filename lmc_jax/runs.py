"""The one way to load a training run: its own config, model, parameters, step and which weights were taken.

Evaluation, export, extra encoders of the methods table and every later consumer load a run through
`load_run`, so they all score and ship the same arrays. Reading never creates or changes anything in
the run directory. `write_random_run` writes the opposite: a loadable run of random weights (benchmarks, tests).
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from flax import nnx

from lmc_jax import parallel, train
from lmc_jax.checkpoint import CheckpointError, Checkpointer

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"


@dataclasses.dataclass(frozen=True)
class Run:
    """One restored checkpoint of a training run."""

    directory: epath.Path  # the run's workdir (holds config.json and checkpoints/)
    config: ml_collections.ConfigDict  # the run's own config, as it trained
    graphdef: nnx.GraphDef
    params: dict  # pure dict {"encoder", "projector"[, heads]}, laid out on the mesh it was loaded onto
    step: int
    weights: str  # "ema" (the EMA of the weights) or "raw" (the optimiser's weights)

    @property
    def crop_size(self) -> int:
        """The view edge the encoder was trained on."""
        return self.config.data.crop_size

    def provenance(self) -> dict:
        """Which weights these are, for reports and export metadata: run, step, weights."""
        return {"run": str(self.directory), "step": self.step, "weights": self.weights}


def run_directory(path: epath.PathLike) -> epath.Path:
    """A run's workdir, given the workdir or its checkpoints/ folder; CheckpointError when it is neither."""
    path = epath.Path(path)
    if path.name == CHECKPOINTS and (path.parent / CONFIG).is_file():
        path = path.parent
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path / CONFIG} does not exist: expected the workdir of a training run (or its "
                              f"{CHECKPOINTS}/ folder); `python -m lmc_jax.main` writes {CONFIG} beside {CHECKPOINTS}/.")
    return path


def upgrade_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A run config written by an older version, in today's keys: `dann.enabled` became `objectives`."""
    if "objectives" not in config:
        dann = config.get("dann", {})
        config.objectives = ("cross_correlation", *(("dann",) if dann.get("enabled", False) else ()))
        if "enabled" in dann:
            del config.dann["enabled"]
    config.objectives = tuple(config.objectives)
    return config


def read_run_config(path: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a training run wrote to config.json (what rebuilds its model)."""
    return upgrade_config(ml_collections.ConfigDict(json.loads((run_directory(path) / CONFIG).read_text())))


def load_run(path: epath.PathLike, step: int = -1, use_ema: bool = True,
             mesh: jax.sharding.Mesh | None = None) -> Run:
    """Checkpoint `step` (-1: the newest) of the run at `path` (workdir or its checkpoints/), rebuilt from the
    run's own config.json onto `mesh` (default: this host's first device).

    With `use_ema` the EMA of the weights when the run kept one (optimizer.ema_decay > 0), else the raw
    weights; `Run.weights` says which was taken. Errors name the directory and the fix, in one line.
    """
    directory = run_directory(path)
    config = read_run_config(directory)
    checkpoints = directory / CHECKPOINTS
    if not checkpoints.is_dir():
        raise CheckpointError(f"no {CHECKPOINTS}/ in {directory}: the run has not saved a checkpoint yet; train "
                              "first or point at a trained workdir.")
    mesh = mesh or parallel.make_mesh(1, 1, devices=jax.local_devices()[:1])
    trainer = train.make_trainer(config, mesh)
    checkpointer = Checkpointer(checkpoints, async_save=False, create=False)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {checkpoints}: train first (python -m lmc_jax.main --config ... "
                                  f"--workdir {directory}) or point at a trained workdir.")
        step = steps[-1] if step == -1 else step
        state, _ = checkpointer.restore(step, train.abstract_state(trainer))
    finally:
        checkpointer.close()
    weights = "ema" if use_ema and "ema_params" in state else "raw"
    params = state["ema_params"] if weights == "ema" else state["params"]
    return Run(directory, config, trainer.graphdef, params, step, weights)


def initial_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, dict]:
    """(graphdef, params) of `config`'s model at initialisation (the 'untrained' reference, training's seed)."""
    trainer = train.make_trainer(config, mesh)
    return trainer.graphdef, train.init_state(trainer)["params"]


def write_random_run(workdir: epath.PathLike, config: ml_collections.ConfigDict, seed: int = 0,
                     scale: float = 0.02) -> epath.Path:
    """A run directory (config.json + checkpoint of step 1) of `config` whose weights are N(0, scale²) draws,
    written without training or compiling (seconds): what `load_run`, `lmc_jax.load` and mode=embed read."""
    workdir = epath.Path(workdir)
    trainer = train.make_trainer(config, parallel.make_mesh(1, 1, devices=jax.local_devices()[:1]))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda leaf: rng.normal(0.0, scale, leaf.shape).astype(leaf.dtype)
                         if jnp.issubdtype(leaf.dtype, jnp.floating) else np.zeros(leaf.shape, leaf.dtype),
                         train.abstract_state(trainer))
    checkpointer = Checkpointer(workdir / CHECKPOINTS, async_save=False)
    checkpointer.save(1, state, None, {})
    checkpointer.close()
    (workdir / CONFIG).write_text(config.to_json_best_effort(indent=2))
    return workdir
