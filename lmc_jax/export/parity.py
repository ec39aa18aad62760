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


def timm_embeddings(model, images: np.ndarray, mean, std) -> np.ndarray:
    """[B, H, W, 3] float images in [0, 1] → timm embeddings [B, D] (float32 numpy)."""
    import torch  # pylint: disable=import-outside-toplevel

    x = (np.asarray(images, np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
    return out.numpy().astype(np.float32)


def export_max_abs_diff(export_dir: str | pathlib.Path, ours: np.ndarray, images: np.ndarray) -> float:
    """max |timm(export)(images) − ours| over every embedding value."""
    config = json.loads((pathlib.Path(export_dir) / "config.json").read_text())["pretrained_cfg"]
    theirs = timm_embeddings(load_exported(export_dir), images, config["mean"], config["std"])
    return float(np.abs(theirs - np.asarray(ours, np.float32)).max())


def encoder_embeddings(encoder_params: dict, variant: str, pool: str, image_size: int, images: np.ndarray) -> np.ndarray:
    """Our encoder (float32 compute) applied to [B, H, W, 3] images in [0, 1]."""
    abstract = nnx.eval_shape(lambda: ViT(variant, image_size, pool=pool, rngs=nnx.Rngs(0)))
    graphdef, _ = nnx.split(abstract, nnx.Param)
    apply = jax.jit(lambda params, x: nnx.merge(graphdef, params)(x))
    return np.asarray(apply(encoder_params, images))
