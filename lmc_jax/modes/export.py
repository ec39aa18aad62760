"""`mode=export`: a training run's encoder (any step) → timm safetensors + config.json, parity-checked.

The run is loaded with `lmc_jax.runs.load_run` (the same weights evaluation scores: EMA when kept, unless
config.use_ema=False), so the export config names only the run, the step and the output; config.json
records the run, step and which weights. With torch/timm installed the export is loaded into timm before it is
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
from etils import epath

from lmc_jax import runs
from lmc_jax.checkpoint import absolute
from lmc_jax.errors import UserError, require
from lmc_jax.export import parity
from lmc_jax.export.timm import LAYER_NORM_EPS, hub_config, projector_to_torch, timm_spec, to_timm
from lmc_jax.export.write import write_export
from lmc_jax.models.vit import arch_kwargs


class ExportError(UserError):
    """An export config value or run directory that cannot be exported."""


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ExportError naming the first bad value of an export config."""
    def check(condition: bool, key: str, fix: str) -> None:
        require(condition, key, config[key], fix, ExportError)

    check(config.mode == "export", "mode", "this config is for mode='export'")
    check(bool(config.checkpoint), "checkpoint", "set it to the workdir of a training run")
    check(isinstance(config.step, int) and config.step >= -1, "step", "a checkpointed step, or -1 for the latest")
    for key in ("use_ema", "include_projector", "overwrite", "verify"):
        check(isinstance(config[key], bool), key, "must be True or False")
    check(config.verify_images > 0, "verify_images", "must be a positive integer")
    check(config.verify_tolerance > 0, "verify_tolerance", "must be > 0")


def _parity_check(config: ml_collections.ConfigDict, encoder_params: dict, model_config, image_size: int,
                  result: dict) -> Any:
    """A callback for `write_export`: loads the staged export into timm and compares embeddings."""
    images = np.random.default_rng(0).uniform(size=(config.verify_images, image_size, image_size, 3)).astype(np.float32)
    ours = parity.encoder_embeddings(encoder_params, model_config.variant, model_config.pool, image_size, images,
                                   **arch_kwargs(model_config))

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


def run(config: ml_collections.ConfigDict, workdir: epath.PathLike | None) -> dict:
    """Exports config.checkpoint's encoder (and projector if asked) to config.output (default workdir/export)."""
    validate(config)
    if not config.output and workdir is None:
        raise ExportError("config.output is empty and no --workdir was given: set config.output=DIR.")
    output = absolute(config.output if config.output else epath.Path(workdir) / "export")
    loaded = runs.load_run(config.checkpoint, config.step, config.use_ema)
    run_dir, step, params = loaded.directory, loaded.step, jax.device_get(loaded.params)
    model_config, image_size = loaded.config.model, loaded.crop_size
    spec = timm_spec(model_config.variant, model_config.pool, image_size, **arch_kwargs(model_config))
    files = {"model.safetensors": to_timm(params["encoder"])}
    provenance = dict(
        variant=model_config.variant, pool=model_config.pool, image_size=image_size, norm_eps=LAYER_NORM_EPS,
        input="RGB, scaled to [0, 1], then normalised with pretrained_cfg mean/std (timm's data config does this)",
        checkpoint=str(absolute(run_dir)), step=step, weights=loaded.weights,
        load_with="timm.create_model('local-dir:<this directory>', pretrained=True, num_classes=0)",
    )
    if config.include_projector:
        files["projector.safetensors"] = projector_to_torch(params["projector"])
        provenance["projector"] = dict(
            dims=list(model_config.projector_dims),
            layers="(Linear without bias → BatchNorm1d with batch statistics, eps 1e-5 → ReLU) × (n−1), "
                   "then Linear without bias; torch layout, keys projector.*",
        )
    result: dict[str, Any] = dict(output=str(output), step=step, weights=loaded.weights,
                                  architecture=spec.architecture,
                                  model_args=spec.model_args, mean=spec.mean, std=spec.std)
    check = _parity_check(config, params["encoder"], model_config, image_size, result) if config.verify else None
    paths = write_export(output, files, hub_config(spec, {"lmc_jax": provenance}), overwrite=config.overwrite,
                         check=check)
    result["files"] = [str(path) for path in paths]
    logging.info("exported %s step %d (%s weights) to %s (%s)", run_dir, step, loaded.weights, output,
                 result.get("parity", "not verified"))
    if jax.process_index() == 0:
        print(json.dumps(result, indent=2))
    return result
