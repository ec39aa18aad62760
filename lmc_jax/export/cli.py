"""`mode=export`: a training run's encoder (any step) → timm safetensors + config.json, parity-checked.

The model is rebuilt from the run's own `config.json`, so the export config names only the run,
the step and the output. With torch/timm installed the export is loaded into timm before it is
moved into place, and kept only if its embeddings match ours.
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from lmc_jax import parallel, train
from lmc_jax.checkpoint import CheckpointError, Checkpointer
from lmc_jax.export import parity
from lmc_jax.export.timm import LAYER_NORM_EPS, hub_config, projector_to_torch, timm_spec, to_timm
from lmc_jax.export.write import write_export
from lmc_jax.models.vit import IMAGE_MEAN, IMAGE_STD


class ExportError(ValueError):
    """An export config value or run directory that cannot be exported."""


def _require(condition: bool, key: str, value: Any, fix: str) -> None:
    if not condition:
        raise ExportError(f"config.{key}={value!r}: {fix}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ExportError naming the first bad value of an export config."""
    _require(config.mode == "export", "mode", config.mode, "this config is for mode='export'")
    _require(bool(config.checkpoint), "checkpoint", config.checkpoint, "set it to the workdir of a training run")
    _require(isinstance(config.step, int) and config.step >= -1, "step", config.step,
             "a checkpointed step, or -1 for the latest")
    for key in ("include_projector", "overwrite", "verify"):
        _require(isinstance(config[key], bool), key, config[key], "must be True or False")
    _require(config.verify_images > 0, "verify_images", config.verify_images, "must be a positive integer")
    _require(config.verify_tolerance > 0, "verify_tolerance", config.verify_tolerance, "must be > 0")


def restore_params(run_config: ml_collections.ConfigDict, run_dir: pathlib.Path, step: int,
                   use_ema: bool = True) -> tuple[int, dict]:
    """(step, params) of checkpoint `step` (-1: newest) of a run, on this host's first device.

    The EMA of the weights when the run kept one (optimizer.ema_decay > 0) and `use_ema`.
    """
    directory = run_dir / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoints directory {directory}: train first or fix config.checkpoint.")
    mesh = parallel.make_mesh(1, 1, devices=jax.local_devices()[:1])
    trainer = train.make_trainer(run_config, mesh)
    checkpointer = Checkpointer(directory, async_save=False)
    try:
        steps = checkpointer.all_steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {directory}: train first or fix config.checkpoint.")
        step = steps[-1] if step == -1 else step
        state, _ = checkpointer.restore(step, train.abstract_state(trainer))
    finally:
        checkpointer.close()
    params = state["ema_params"] if use_ema and "ema_params" in state else state["params"]
    return step, jax.device_get(params)


def _parity_check(config: ml_collections.ConfigDict, encoder_params: dict, model_config, image_size: int,
                  result: dict) -> Any:
    """A callback for `write_export`: loads the staged export into timm and compares embeddings."""
    images = np.random.default_rng(0).uniform(size=(config.verify_images, image_size, image_size, 3)).astype(np.float32)
    ours = parity.encoder_embeddings(encoder_params, model_config.variant, model_config.pool, image_size, images)

    def check(staging: pathlib.Path) -> None:
        try:
            diff = parity.export_max_abs_diff(staging, ours, images)
        except ImportError as error:
            logging.warning("export not checked against timm: %s", error)
            result["parity"] = f"skipped ({error})"
            return
        result["parity"] = {"max_abs_diff": diff, "images": config.verify_images}
        if not diff <= config.verify_tolerance:
            raise ExportError(f"timm's embeddings of the export differ from ours by {diff:.3g} (max abs) > "
                              f"config.verify_tolerance={config.verify_tolerance}; nothing was written.")

    return check


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path | None) -> dict:
    """Exports config.checkpoint's encoder (and projector if asked) to config.output (default workdir/export)."""
    run_dir = pathlib.Path(config.checkpoint)
    if not config.output and workdir is None:
        raise ExportError("config.output is empty and no --workdir was given: set config.output=DIR.")
    output = pathlib.Path(config.output) if config.output else pathlib.Path(workdir) / "export"
    run_config = train.read_run_config(run_dir)
    step, params = restore_params(run_config, run_dir, config.step, config.use_ema)
    model_config, image_size = run_config.model, run_config.data.crop_size
    spec = timm_spec(model_config.variant, model_config.pool, image_size)
    files = {"model.safetensors": to_timm(params["encoder"])}
    provenance = dict(
        variant=model_config.variant, pool=model_config.pool, image_size=image_size, norm_eps=LAYER_NORM_EPS,
        input="RGB, scaled to [0, 1], then normalised with pretrained_cfg mean/std (timm's data config does this)",
        checkpoint=str(run_dir.absolute()), step=step,
        load_with="timm.create_model('local-dir:<this directory>', pretrained=True, num_classes=0)",
    )
    if config.include_projector:
        files["projector.safetensors"] = projector_to_torch(params["projector"])
        provenance["projector"] = dict(
            dims=list(model_config.projector_dims),
            layers="(Linear without bias → BatchNorm1d with batch statistics, eps 1e-5 → ReLU) × (n−1), "
                   "then Linear without bias; torch layout, keys projector.*",
        )
    result: dict[str, Any] = dict(output=str(output.absolute()), step=step, architecture=spec.architecture,
                                  model_args=spec.model_args, mean=IMAGE_MEAN, std=IMAGE_STD)
    check = _parity_check(config, params["encoder"], model_config, image_size, result) if config.verify else None
    paths = write_export(output, files, hub_config(spec, {"lmc_jax": provenance}), overwrite=config.overwrite,
                         check=check)
    result["files"] = [str(path) for path in paths]
    logging.info("exported %s step %d to %s (%s)", run_dir, step, output, result.get("parity", "not verified"))
    return result


def main(config: ml_collections.ConfigDict, workdir: str | None) -> None:
    """`main.py`'s export branch: validate, export, print the result as JSON."""
    validate(config)
    result = run(config, pathlib.Path(workdir) if workdir else None)
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2))
