"""Checks a train/evaluate config before anything is compiled: each bad value raises naming its key and the fix.

The one validation path of those modes (`config.eval`'s suite knobs through `Settings`). Unknown keys are
refused earlier, by the locked ConfigDict that `config_flags` loads. Export and normalize configs are
checked by their modes.
"""

from __future__ import annotations

import functools

import ml_collections

from data_pipelines import build as data_builders
from lmc_jax import errors, methods, objectives
from lmc_jax.evaluate.extra_encoders import parse_specs
from lmc_jax.evaluate.settings import Settings
from lmc_jax.export.load import init_from_path
from lmc_jax.models.vit import MLPS, POOLS, parse_variant
from lmc_jax.stain.normalizers import NAMES as NORMALIZERS
from lmc_jax.stain.scale import ScaleAugConfig

MODES = ("train", "evaluate")
DTYPES = ("float32", "bfloat16", "float16")
DOMAIN_FIELDS = ("", "site")  # what a K-way DANN head may name: the train batch's site (BATCH_KEYS of train.py)


ConfigError = errors.ConfigError
_require = functools.partial(errors.require, error=ConfigError)


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError on the first invalid value."""
    _require(config.mode in MODES, "mode", config.mode, f"choose one of {MODES}")
    _require(config.batch_size > 0, "batch_size", config.batch_size, "must be a positive integer")
    _require(config.num_steps > 0, "num_steps", config.num_steps, "must be a positive integer")
    data = config.data
    _require(data.name in data_builders.available(), "data.name", data.name,
             f"choose a data set of data_pipelines/builders/: {', '.join(data_builders.available())}")
    _require(data.crop_size <= data.tile_size, "data.crop_size", data.crop_size,
             f"must not exceed data.tile_size={data.tile_size}")
    _require(data.worker_count >= 0, "data.worker_count", data.worker_count, "must be ≥ 0")
    if config.mode == "train":  # mode=evaluate rebuilds every model from its own run's config.json
        _validate_model(config)
    cross_correlation = "cross_correlation" in config.objectives
    _require(config.lmc.num_views >= (2 if cross_correlation else 1), "lmc.num_views", config.lmc.num_views,
             "the cross_correlation term needs at least 2 views" if cross_correlation else "must be ≥ 1")
    _require(config.lmc.off_diagonal_weight >= 0, "lmc.off_diagonal_weight", config.lmc.off_diagonal_weight,
             "must be ≥ 0")
    for name, value in config.lmc.stain.items():
        _require(value >= 0, f"lmc.stain.{name}", value, "strengths must be ≥ 0 (0 disables)")
    _require(len(config.objectives) > 0 and set(config.objectives) <= set(objectives.TERMS), "objectives",
             tuple(config.objectives), f"name one or more loss terms of {sorted(objectives.TERMS)}")
    dann = config.dann
    _require(dann.weight >= 0, "dann.weight", dann.weight, "must be ≥ 0 (the domain loss weight)")
    _require(dann.gamma > 0, "dann.gamma", dann.gamma, "must be > 0 (DANN uses 10)")
    _require(all(int(d) > 0 for d in dann.hidden_dims), "dann.hidden_dims", tuple(dann.hidden_dims),
             "must be a tuple of positive widths (() = a linear head)")
    _require(dann.head_lr_scale > 0, "dann.head_lr_scale", dann.head_lr_scale,
             "must be > 0 (1 = the head at the run's learning rate)")
    _require(dann.domain_field in DOMAIN_FIELDS, "dann.domain_field", dann.domain_field,
             f"choose one of {DOMAIN_FIELDS} ('' = view 0 vs a stain rendering)")
    _require(not dann.domain_field or dann.num_domains >= 2, "dann.num_domains", dann.num_domains,
             "a K-way domain head needs the number of domains (≥ 2; the data set's number of sites)")
    _require(config.supervised.num_classes >= 2, "supervised.num_classes", config.supervised.num_classes,
             "must be ≥ 2 (the data set's number of classes)")
    _require(config.supervised.weight >= 0, "supervised.weight", config.supervised.weight, "must be ≥ 0")
    _validate_scale(config.lmc.scale)
    gan = config.dcgan
    _require(0 <= gan.ratio < 1, "dcgan.ratio", gan.ratio, "must be in [0, 1); 0 = no DCGAN samples")
    _require(gan.ratio == 0 or "supervised" in config.objectives, "dcgan.ratio", gan.ratio,
             "DCGAN samples carry class labels: use them with the 'supervised' term in config.objectives")
    _require(gan.ratio == 0 or bool(gan.bank_path), "dcgan.bank_path", gan.bank_path,
             "dcgan.ratio > 0 needs the samples' .npz (mode=lomo writes it; lmc_jax.dcgan.run)")
    for key in ("num_steps", "batch_size", "latent_dim", "width", "bank_size"):
        _require(gan[key] > 0, f"dcgan.{key}", gan[key], "must be a positive integer")
    _require(gan.learning_rate > 0, "dcgan.learning_rate", gan.learning_rate, "must be > 0")
    _require(0 <= data.val_region_fraction < 1, "data.val_region_fraction", data.val_region_fraction,
             "must be in [0, 1): the share of train regions kept out for model selection")
    opt = config.optimizer
    _require(opt.learning_rate > 0, "optimizer.learning_rate", opt.learning_rate, "must be > 0")
    _require(0 <= opt.warmup_steps < config.num_steps, "optimizer.warmup_steps", opt.warmup_steps,
             f"must be in [0, num_steps={config.num_steps})")
    _require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be ≥ 0")
    _require(opt.grad_clip_norm >= 0, "optimizer.grad_clip_norm", opt.grad_clip_norm, "must be ≥ 0 (0 disables)")
    _require(opt.grad_accum_steps >= 1 and config.batch_size % opt.grad_accum_steps == 0,
             "optimizer.grad_accum_steps", opt.grad_accum_steps, f"must be ≥ 1 and divide batch_size={config.batch_size}")
    _require(0 <= opt.ema_decay < 1, "optimizer.ema_decay", opt.ema_decay, "must be in [0, 1); 0 disables")
    _require(0 <= opt.freeze_encoder_steps < config.num_steps, "optimizer.freeze_encoder_steps",
             opt.freeze_encoder_steps, f"must be in [0, num_steps={config.num_steps}); 0 trains the encoder at once")
    dist = config.distributed
    _require(dist.num_processes >= 1, "distributed.num_processes", dist.num_processes, "must be ≥ 1")
    _require(0 <= dist.process_id < dist.num_processes, "distributed.process_id", dist.process_id,
             f"must be in [0, num_processes={dist.num_processes})")
    _require(dist.num_processes == 1 or bool(dist.coordinator_address), "distributed.coordinator_address",
             dist.coordinator_address, "multi-process runs need host:port of process 0")
    _require(config.checkpoint.every_steps > 0, "checkpoint.every_steps", config.checkpoint.every_steps,
             "must be a positive integer")
    _require(config.log_every_steps > 0, "log_every_steps", config.log_every_steps, "must be a positive integer")
    unknown = set(config.eval.references) - set(methods.REFERENCES)
    _require(not unknown, "eval.references", tuple(config.eval.references), f"unknown {sorted(unknown)}; "
             f"choose from {methods.REFERENCES}")
    unknown = set(config.eval.normalizers) - set(NORMALIZERS)
    _require(not unknown, "eval.normalizers", tuple(config.eval.normalizers), f"unknown {sorted(unknown)}; "
             f"choose from {NORMALIZERS}")
    _require(config.eval.normalizer_fit_tiles > 0, "eval.normalizer_fit_tiles", config.eval.normalizer_fit_tiles,
             "must be a positive integer")
    parse_specs(config, reserved=(*methods.METHODS, *config.eval.normalizers))
    _require(isinstance(config.eval.use_ema, bool), "eval.use_ema", config.eval.use_ema, "must be True or False")
    _require(isinstance(config.eval.source_split, str) and bool(config.eval.source_split), "eval.source_split",
             config.eval.source_split, "name the TFDS split whose tiles fit the probes (e.g. 'train')")
    _require(len(config.eval.heldout_splits) > 0 and all(isinstance(s, str) and s for s in config.eval.heldout_splits),
             "eval.heldout_splits", tuple(config.eval.heldout_splits),
             "name one or more TFDS splits holding every site's test tiles (e.g. ('heldout', 'ihc'))")
    _require(isinstance(config.eval.source_only, bool), "eval.source_only", config.eval.source_only,
             "must be True or False")
    _require(config.eval.max_split_tiles >= 0, "eval.max_split_tiles", config.eval.max_split_tiles, "must be ≥ 0 (0 = all)")
    _require(config.eval.batch_size > 0, "eval.batch_size", config.eval.batch_size, "must be a positive integer")
    Settings.from_config(config.eval)
    try:
        init_from_path(config.init_from)
    except ValueError as error:
        raise ConfigError(f"config.init_from={config.init_from!r}: {error}") from None
    if config.mode == "evaluate":
        _require(bool(config.eval.checkpoint), "eval.checkpoint", config.eval.checkpoint,
                 "mode=evaluate needs the workdir of a trained run")


def _validate_scale(scale: ml_collections.ConfigDict) -> None:
    """config.lmc.scale: the magnification views' switch and ranges (their checks live in ScaleAugConfig)."""
    _require(isinstance(scale.views, bool), "lmc.scale.views", scale.views, "must be True or False")
    try:
        ScaleAugConfig.from_config(scale)
    except (TypeError, ValueError) as error:
        raise ConfigError(str(error).replace("ScaleAugConfig.", "config.lmc.scale.")) from None


def _validate_model(config: ml_collections.ConfigDict) -> None:
    """The model keys of a run to train, and the crop size its patch size needs."""
    model = config.model
    try:
        _, patch = parse_variant(model.variant)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    _require(config.data.crop_size % patch == 0, "data.crop_size", config.data.crop_size,
             f"must be a multiple of the patch size {patch} of model.variant={model.variant!r}")
    _require(model.pool in POOLS, "model.pool", model.pool, f"choose one of {POOLS}")
    _require(model.reg_tokens >= 0, "model.reg_tokens", model.reg_tokens, "must be ≥ 0 (0 = no register tokens)")
    _require(model.mlp in MLPS, "model.mlp", model.mlp, f"choose one of {MLPS}")
    _require(model.mlp_ratio >= 0, "model.mlp_ratio", model.mlp_ratio, "must be ≥ 0 (0 = the size's own)")
    _require(model.init_values >= 0, "model.init_values", model.init_values, "must be ≥ 0 (0 = no layer scale)")
    for key in ("image_mean", "image_std"):
        values = tuple(model[key])
        _require(len(values) == 3 and (key == "image_mean" or min(values) > 0), f"model.{key}", values,
                 "three per-channel values (RGB)" + (", each > 0" if key == "image_std" else ""))
    _require(model.dtype in DTYPES, "model.dtype", model.dtype, f"choose one of {DTYPES}")
    dims = tuple(model.projector_dims)
    _require(len(dims) > 0 and all(int(d) > 0 for d in dims), "model.projector_dims", dims,
             "must be a non-empty tuple of positive widths")
