"""Reads timm ViT weights (.safetensors, or a plain .bin/.pth tensor dict) into our encoder's params.

Used by `config.init_from = "timm:/path/model.safetensors"`, or `"hf-hub:org/name"` for a model already in the
local Hugging Face cache (never downloaded). Pickles are read with `torch.load(weights_only=True)` and must hold
only tensors: nothing arbitrary is unpickled.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
from typing import Any

import jax
import ml_collections
import numpy as np

from lmc_jax.export.timm import (ARCH_KEYS, TIMM_ARCH_HEADS, TimmWeightsError, describe, fold_input_normalization,
                                 from_timm, timm_mlp_ratio)
from lmc_jax.models.vit import SIZES, arch_kwargs, parse_variant

INIT_FROM_PREFIX = "timm:"
HF_HUB_PREFIX = "hf-hub:"
HF_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader looks for, in its order
SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".bin", ".pth", ".pt")


def read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a .safetensors file as float32 numpy (bfloat16/float16 included)."""
    from safetensors.flax import load_file  # pylint: disable=import-outside-toplevel  # handles bfloat16

    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for a corrupt header
        raise TimmWeightsError(f"{path} is not a readable safetensors file ({type(error).__name__}: {error}).") from error
    return {key: np.asarray(value, np.float32) for key, value in tensors.items()}


def read_torch_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    """A plain {name: tensor} pickle read with `torch.load(weights_only=True)`, as float32 numpy."""
    try:
        import torch  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise TimmWeightsError(f"reading {path} needs PyTorch (pip install torch), or convert it to "
                               ".safetensors, which needs no torch.") from error
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for forbidden globals, RuntimeError for non-zip files, ...
        raise TimmWeightsError(f"{path} is not a plain tensor state dict that torch.load(weights_only=True) can "
                               f"read ({type(error).__name__}: {error}). Save model.state_dict() instead.") from error
    if not isinstance(loaded, dict):
        raise TimmWeightsError(f"{path} holds a {type(loaded).__name__}, not a {{name: tensor}} state dict.")
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            hint = (f" Save checkpoint[{key!r}] on its own." if isinstance(value, dict) and key in ("model", "state_dict")
                    else "")
            raise TimmWeightsError(f"{path}: entry {key!r} is a {type(value).__name__}, not a tensor; expected a "
                                   f"plain state dict.{hint}")
    return {key: value.detach().to(torch.float32).numpy() for key, value in loaded.items()}


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Dispatches on the suffix: .safetensors (no torch needed) or .bin/.pth/.pt (torch)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"timm weights file {path} does not exist; check config.init_from.")
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        return read_safetensors(path)
    if suffix in PICKLE_SUFFIXES:
        return read_torch_state_dict(path)
    raise TimmWeightsError(f"{path}: unknown weights format {suffix!r}; use one of "
                           f"{SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES}.")


def read_hub_config(weights: pathlib.Path) -> dict[str, Any]:
    """timm's config.json beside the weights file as a dict ({} when there is none); unreadable JSON raises."""
    config_path = weights.parent / "config.json"
    if not config_path.is_file():
        return {}
    try:
        return json.loads(config_path.read_text())
    except (OSError, ValueError) as error:
        raise TimmWeightsError(f"{config_path} beside the weights is not valid JSON ({error}).") from error


def check_declared_heads(declared: dict[str, Any], path: pathlib.Path, variant: str) -> None:
    """Heads cannot be read from weights: a config.json beside them (`declared`) that declares others is refused."""
    config_path = path.parent / "config.json"
    heads = parse_variant(variant)[0].heads
    found = (declared.get("model_args") or {}).get("num_heads", TIMM_ARCH_HEADS.get(declared.get("architecture")))
    if found is not None and int(found) != heads:
        raise TimmWeightsError(f"{config_path} declares {found} attention heads but model.variant={variant!r} "
                               f"has {heads}; set model.variant to the weights' architecture.")


def declared_normalization(declared: dict[str, Any]) -> tuple[list[float], list[float]] | None:
    """(mean, std) the weights expect, from timm's config.json (`pretrained_cfg` or top level); None if unsaid."""
    for section in (declared.get("pretrained_cfg") or {}, declared):
        if section.get("mean") is not None and section.get("std") is not None:
            return list(section["mean"]), list(section["std"])
    return None


def model_keys_from_weights(state_dict: dict[str, np.ndarray], declared: dict[str, Any],
                            source: str = "the weights") -> dict[str, Any]:
    """The `config.model` keys that rebuild the network of timm weights: shapes from the state dict, heads and
    input normalisation from their config.json (`declared`), pool from its global_pool ('' → "cls"; a model card's
    own convention, e.g. Virchow2's "cls_patch_mean", is the user's to set)."""
    args = declared.get("model_args") or {}
    heads = args.get("num_heads", TIMM_ARCH_HEADS.get(declared.get("architecture")))
    if heads is None or "patch_embed.proj.weight" not in state_dict:
        raise TimmWeightsError(f"{source} ({describe(state_dict)}): the attention heads are not in the weights and "
                               "config.json gives neither model_args.num_heads nor a known architecture; set "
                               "model.variant ('<width>x<depth>x<heads>/<patch>') yourself.")
    width, _, patch, _ = state_dict["patch_embed.proj.weight"].shape
    depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
    named = [name for name, size in SIZES.items() if (size.width, size.depth, size.heads) == (width, depth, heads)]
    has_cls, reg = "cls_token" in state_dict, state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
    fc2_in = state_dict["blocks.0.mlp.fc2.weight"].shape[1]
    gated = "blocks.0.mlp.fc1_g.weight" in state_dict or state_dict["blocks.0.mlp.fc1.weight"].shape[0] == 2 * fc2_in
    positions = state_dict["pos_embed"].shape[1]
    pool = declared.get("global_pool", args.get("global_pool", "token"))
    keys = dict(
        variant=f"{named[0] if named else f'{width}x{depth}x{heads}'}/{patch}",
        pool=("patch_mean" if has_cls else "mean") if pool == "avg" else ("cls" if has_cls else "mean"),
        reg_tokens=int(reg), no_embed_class=bool(has_cls + reg) and math.isqrt(positions) ** 2 == positions,
        mlp="swiglu_packed" if gated else "gelu",
        mlp_ratio=timm_mlp_ratio(width, 2 * fc2_in if gated else fc2_in),
        init_values=1e-5 if "blocks.0.ls1.gamma" in state_dict else 0.0,  # the weights' own gammas are loaded
    )
    normalization = declared_normalization(declared)
    if normalization is not None:
        keys.update(image_mean=tuple(normalization[0]), image_std=tuple(normalization[1]))
    return keys


def load_timm_weights(path: str | pathlib.Path, model_config: ml_collections.ConfigDict,
                      image_size: int) -> dict[str, Any]:
    """timm ViT weights file → pure param dict for our encoder (`model.variant`, `model.pool`, the architecture
    options of `arch_kwargs`, `image_size`).

    Weights that declare (config.json beside them) another input normalisation than `model.image_mean/std` get
    the difference folded into the patch embedding, so the model's normalisation feeds them what they were
    trained on; set `model.image_mean/std` to the declared values to apply them as they are instead.
    """
    path = pathlib.Path(path)
    arch = arch_kwargs(model_config)
    params, notes = from_timm(read_state_dict(path), model_config.variant, model_config.pool, image_size,
                              source=str(path), **{key: arch[key] for key in ARCH_KEYS})
    declared = read_hub_config(path)
    check_declared_heads(declared, path, model_config.variant)
    normalization = declared_normalization(declared)
    ours = (arch["image_mean"], arch["image_std"])
    if normalization is not None and not np.allclose(normalization, ours, atol=1e-6):
        params = fold_input_normalization(params, *normalization, *ours)
        notes.append(f"input normalisation mean={normalization[0]} std={normalization[1]} folded into patch_embed "
                     f"(model.image_mean/std are {list(ours[0])}/{list(ours[1])})")
    for note in notes:
        logging.info("timm weights %s: %s", path, note)
    return params


def hf_hub_weights(repo_id: str) -> pathlib.Path:
    """The weights file of `repo_id` in the local Hugging Face cache ($HF_HUB_CACHE, else the library's default);
    offline only: a model not in the cache raises a one-line error saying how to put it there."""
    try:
        from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
        from huggingface_hub.errors import LocalEntryNotFoundError  # pylint: disable=import-outside-toplevel
    except ImportError as error:
        raise TimmWeightsError(f"config.init_from='{HF_HUB_PREFIX}{repo_id}' needs huggingface_hub (pip install "
                               "huggingface_hub), or point init_from at the weights file: 'timm:/path/model.safetensors'."
                               ) from error
    cache = os.environ.get("HF_HUB_CACHE") or None
    try:
        snapshot = pathlib.Path(snapshot_download(repo_id, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError) as error:
        raise TimmWeightsError(
            f"config.init_from='{HF_HUB_PREFIX}{repo_id}': {repo_id} is not in the local Hugging Face cache "
            f"({cache or 'the default cache, ~/.cache/huggingface/hub'}; nothing is downloaded); on a machine with "
            f"network run `hf download {repo_id}` (gated models: after `hf auth login`) and copy its "
            f"models--{repo_id.replace('/', '--')} folder into the cache, or set HF_HUB_CACHE to a cache holding it."
        ) from error
    for name in HF_WEIGHTS_FILES:
        if (snapshot / name).is_file():
            return snapshot / name
    raise TimmWeightsError(f"config.init_from='{HF_HUB_PREFIX}{repo_id}': the cached snapshot {snapshot} holds none "
                           f"of {HF_WEIGHTS_FILES}; is it a timm model (transformers models such as Phikon-v2 are not)?")


def init_from_path(init_from: str) -> pathlib.Path | None:
    """`config.init_from` → weights path ('' → None); another scheme raises naming the value and the fix."""
    if not init_from:
        return None
    if init_from.startswith(HF_HUB_PREFIX) and init_from.count("/") == 1 and not init_from.endswith("/"):
        return hf_hub_weights(init_from[len(HF_HUB_PREFIX):])
    if not init_from.startswith(INIT_FROM_PREFIX) or len(init_from) == len(INIT_FROM_PREFIX):
        raise ValueError(f"config.init_from={init_from!r}: use '{INIT_FROM_PREFIX}/path/to/model.safetensors' "
                         f"(or a .bin/.pth state dict), '{HF_HUB_PREFIX}org/name' for a model in the local Hugging "
                         "Face cache, or '' to start from random weights.")
    return pathlib.Path(init_from[len(INIT_FROM_PREFIX):]).expanduser()


def apply_init_from(config: ml_collections.ConfigDict, state: dict, shardings: dict) -> dict:
    """A fresh train state with its encoder replaced by `config.init_from`'s weights (same layout)."""
    path = init_from_path(config.get("init_from", ""))
    if path is None:
        return state
    encoder = load_timm_weights(path, config.model, config.data.crop_size)
    encoder = jax.device_put(encoder, shardings["params"]["encoder"])
    logging.info("encoder initialised from %s", path)
    return dict(state, params=dict(state["params"], encoder=encoder))
