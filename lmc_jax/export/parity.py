"""Embeddings of the same images through our encoder and through timm (torch, CPU) with the export.

timm's ViT expects normalised NCHW input; ours normalises [0, 1] NHWC images itself, so the
same images are normalised here with the mean/std recorded in the export's config.json.
"""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
from flax import nnx

from lmc_jax.export.torch_compat import import_timm
from lmc_jax.models.vit import ViT


def load_exported(export_dir: str | pathlib.Path):
    """The exported encoder as a timm model in eval mode, loaded strictly via `local-dir:`."""
    timm = import_timm()
    model = timm.create_model(f"local-dir:{pathlib.Path(export_dir).absolute()}", pretrained=True, num_classes=0)
    return model.eval()


def pool_timm_tokens(tokens: np.ndarray, pool: str, num_prefix_tokens: int) -> np.ndarray:
    """timm's token output [B, T, D] (global_pool='') → the embedding of our `pool`, as the model cards compute it
    (Virchow2: `torch.cat([output[:, 0], output[:, num_prefix_tokens:].mean(1)], dim=-1)`)."""
    patches = tokens[:, num_prefix_tokens:].mean(axis=1)
    if pool == "cls_patch_mean":
        return np.concatenate([tokens[:, 0], patches], axis=-1)
    return tokens[:, 0] if pool == "cls" else patches


def timm_embeddings(model, images: np.ndarray, mean, std, pool: str = "") -> np.ndarray:
    """[B, H, W, 3] float images in [0, 1] → timm embeddings [B, D] (float32 numpy); a model that returns its
    tokens (global_pool='') is pooled by our `pool` convention."""
    import torch  # pylint: disable=import-outside-toplevel

    x = (np.asarray(images, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy().astype(np.float32)
    return pool_timm_tokens(out, pool, model.num_prefix_tokens) if out.ndim == 3 and pool else out


def export_max_abs_diff(export_dir: str | pathlib.Path, ours: np.ndarray, images: np.ndarray) -> float:
    """max |timm(export)(images) − ours| over every embedding value."""
    config = json.loads((pathlib.Path(export_dir) / "config.json").read_text())
    normalization = config["pretrained_cfg"]
    theirs = timm_embeddings(load_exported(export_dir), images, normalization["mean"], normalization["std"],
                             config.get("lmc_jax_embedding", ""))
    return float(np.abs(theirs - np.asarray(ours, np.float32)).max())


def encoder_embeddings(encoder_params: dict, variant: str, pool: str, image_size: int, images: np.ndarray,
                       **arch) -> np.ndarray:
    """Our encoder (float32 compute, the architecture options `arch` of models.vit.arch_kwargs) applied to
    [B, H, W, 3] images in [0, 1]."""
    abstract = nnx.eval_shape(lambda: ViT(variant, image_size, pool=pool, rngs=nnx.Rngs(0), **arch))
    graphdef, _ = nnx.split(abstract, nnx.Param)
    apply = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    return np.asarray(apply(encoder_params, images))
