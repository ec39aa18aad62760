"""Extra encoders for the methods table: another training run's checkpoint, or timm ViT weights.

`config.eval.extra_encoders` lists specs `[NAME=]SOURCE`: SOURCE is a training workdir (its
`config.json` says which model to rebuild), `timm:/path/model.safetensors` (a `.bin`/`.pth` state
dict also works; the architecture is read from the weights' shapes and the timm `config.json` beside them)
or `hf-hub:org/name` (a model in the local Hugging Face cache, never downloaded). Each becomes a row of the table next to LMC, evaluated on the same tiles.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import re
from collections.abc import Iterable
from typing import NamedTuple

import jax
import ml_collections
from etils import epath

from lmc_jax import runs
from lmc_jax.errors import ConfigError, UserError
from lmc_jax.evaluate.embed import Features, encoder_features, run_features
from lmc_jax.export.load import (HF_HUB_PREFIX, INIT_FROM_PREFIX, hf_hub_weights, load_timm_weights,
                                 model_keys_from_weights, read_hub_config, read_state_dict)
from lmc_jax.export.timm import TimmWeightsError
from lmc_jax.models.vit import parse_variant


class ExtraEncoderError(ConfigError):
    """An extra encoder that cannot be evaluated: the message names the entry and the fix."""


_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclasses.dataclass(frozen=True)
class ExtraEncoder:
    """One parsed spec: the method name in the table, the kind of source and its path."""

    name: str
    kind: str  # "timm" (a weights file) or "workdir" (a training run of this package)
    path: epath.Path  # a local or remote (gs://) path; timm weights are read locally


def parse_spec(spec: str) -> ExtraEncoder:
    """`[NAME=]timm:PATH` or `[NAME=]WORKDIR` → ExtraEncoder; the name defaults to the file stem / directory
    name (for `.../model.safetensors`, its directory's). Text before the first '=' is a name unless it holds
    a '/' (write `./a=b` for a relative path with '='). Raises ExtraEncoderError saying what is wrong."""
    head, separator, tail = spec.partition("=")
    name, source = (head, tail) if separator and "/" not in head else ("", spec)  # '=' later is in the path
    if source.startswith(HF_HUB_PREFIX):  # a model in the local Hugging Face cache: its weights file
        repo = source[len(HF_HUB_PREFIX):]
        source, name = f"{INIT_FROM_PREFIX}{hf_hub_weights(repo)}", name or repo.rpartition("/")[2]
    kind = "timm" if source.startswith(INIT_FROM_PREFIX) else "workdir"
    raw = source[len(INIT_FROM_PREFIX):] if kind == "timm" else source
    if not raw:
        raise ExtraEncoderError("it names no path; use '[NAME=]timm:/path/model.safetensors' or "
                                "'[NAME=]/path/to/training/workdir'.")
    if kind == "timm" and "://" in raw:
        raise ExtraEncoderError("timm weights are read from a local file; copy them to this machine first.")
    path = epath.Path(raw).expanduser()
    if not name:
        name = path.parent.name if kind == "timm" and path.stem == "model" else (path.stem if kind == "timm" else path.name)
    if not _NAME.fullmatch(name):
        raise ExtraEncoderError(f"method name {name!r} must be letters, digits, '_', '.' or '-'; give one explicitly "
                                "as NAME=SOURCE.")
    return ExtraEncoder(name, kind, path)


def _check(extra: ExtraEncoder, config: ml_collections.ConfigDict, taken: set[str]) -> None:
    """The source exists, the name is new, and timm weights declare an architecture that fits data.crop_size."""
    if extra.name in taken:
        raise ExtraEncoderError(f"method name {extra.name!r} is already used (taken: {sorted(taken)}); give another "
                                "as NAME=SOURCE.")
    if extra.kind == "timm" and not extra.path.is_file():
        raise ExtraEncoderError(f"weights file {extra.path} does not exist.")
    if extra.kind == "timm":
        _crop_for(timm_model_config(pathlib.Path(extra.path), config.model), config, str(extra.path))
    if extra.kind == "workdir" and not (runs.run_directory(extra.path) / runs.CHECKPOINTS).is_dir():
        raise ExtraEncoderError(f"{extra.path} is not a trained workdir (no {runs.CHECKPOINTS}/ inside); for timm "
                                "weights write timm:/path/model.safetensors.")


def parse_specs(config: ml_collections.ConfigDict, reserved: Iterable[str]) -> list[ExtraEncoder]:
    """config.eval.extra_encoders parsed and checked (`_check`) before anything is trained or loaded; names in
    `reserved` (the table's other methods) are refused. An ExtraEncoderError names the entry."""
    extras, taken = [], set(reserved)
    for spec in config.eval.extra_encoders:
        try:
            extra = parse_spec(spec)
            _check(extra, config, taken)
        except (UserError, TimmWeightsError) as error:
            raise ExtraEncoderError(f"config.eval.extra_encoders entry {spec!r}: {error}") from None
        taken.add(extra.name)
        extras.append(extra)
    return extras


def timm_model_config(weights: pathlib.Path, fallback: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config.model` with the architecture keys that rebuild `weights` (variant, registers, MLP, layer scale,
    normalisation, timm's pooling: `load.model_keys_from_weights`, from their shapes and the config.json beside
    them; without one, the heads of `fallback.variant`); other keys from `fallback`."""
    model = ml_collections.ConfigDict(fallback.to_dict())
    declared = read_hub_config(weights)
    if not declared:
        logging.info("%s: no config.json beside it; the architecture comes from the weights' shapes", weights)
        declared = {"model_args": {"num_heads": parse_variant_heads(fallback.variant)}}
    model.update(model_keys_from_weights(weight_shapes(weights), declared, source=str(weights)))
    return model


class _Shape(NamedTuple):
    """A tensor known by its shape only (what `model_keys_from_weights` reads)."""

    shape: tuple[int, ...]


def weight_shapes(weights: pathlib.Path) -> dict[str, _Shape]:
    """{key: shape} of a timm weights file: a safetensors header alone (no tensor is read), else the state dict."""
    if weights.suffix != ".safetensors":
        return {key: _Shape(value.shape) for key, value in read_state_dict(weights).items()}
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel

    try:
        with safe_open(str(weights), framework="numpy") as tensors:
            return {key: _Shape(tuple(tensors.get_slice(key).get_shape())) for key in tensors.keys()}
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise TimmWeightsError(f"{weights} is not a readable safetensors file ({type(error).__name__}: {error}).") \
            from error


def parse_variant_heads(variant: str) -> int:
    """The attention heads of a `config.model.variant` (a named size or '<width>x<depth>x<heads>/<patch>')."""
    size, _ = parse_variant(variant)
    return size.heads


def _crop_for(model: ml_collections.ConfigDict, config: ml_collections.ConfigDict, source: str) -> int:
    """The largest multiple of the model's patch size that is ≤ config.data.crop_size."""
    _, patch = parse_variant(model.variant)
    crop = config.data.crop_size // patch * patch
    if crop == 0:
        raise ExtraEncoderError(f"{source}: patch size {patch} is larger than data.crop_size={config.data.crop_size}.")
    return crop


def load(extra: ExtraEncoder, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[Features, dict]:
    """(features, provenance) of one extra encoder (see the module docstring)."""
    if extra.kind == "workdir":
        run = runs.load_run(extra.path, use_ema=config.eval.use_ema, mesh=mesh)
        logging.info("extra encoder %r: %s at step %d (%s weights)", extra.name, run.directory, run.step, run.weights)
        return run_features(run, config, mesh), run.provenance()
    model_config = ml_collections.ConfigDict(config.to_dict())
    model_config.model = timm_model_config(pathlib.Path(extra.path), config.model)
    model_config.init_from = ""
    crop = model_config.data.crop_size = _crop_for(model_config.model, config, str(extra.path))
    graphdef, params = runs.initial_params(model_config, mesh)
    encoder = load_timm_weights(pathlib.Path(extra.path), model_config.model, crop)
    params = dict(params, encoder=jax.device_put(encoder, jax.tree.map(lambda p: p.sharding, params["encoder"])))
    logging.info("extra encoder %r: timm weights %s as ViT-%s (%s pool) on %d px centre crops", extra.name,
                 extra.path, model_config.model.variant, model_config.model.pool, crop)
    return (encoder_features(graphdef, params, crop, mesh, config.eval.batch_size),
            {"weights": f"timm:{extra.path}", "architecture": f"ViT-{model_config.model.variant}"})
