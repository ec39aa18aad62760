"""Images → embeddings: a jitted encoder over fixed-size padded batches (one compile per shape)."""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from lmc_jax import parallel
from lmc_jax.errors import UserError
from lmc_jax.evaluate.kernels.padding import batched
from lmc_jax.runs import Run
from lmc_jax.stain.augment import center_crop

Encoder = Callable[[np.ndarray], np.ndarray]
Features = Callable[[np.ndarray], np.ndarray]  # uint8 images [N, H, W, 3] → float32 embeddings [N, D], any N


@functools.partial(jax.jit, static_argnums=(0, 2))
def _encode(graphdef: nnx.GraphDef, params: dict, crop_size: int, tiles: jax.Array) -> jax.Array:
    """One jit for every model: runs of one architecture (lmc, untrained, geometric_only, …) share its compile."""
    return nnx.merge(graphdef, params).encoder(center_crop(tiles, crop_size))


def make_encoder(graphdef: nnx.GraphDef, params: dict, crop_size: int, mesh: jax.sharding.Mesh) -> Callable:
    """uint8 tiles [B, T, T, 3] → float32 embeddings [B, D] from the encoder part of an LMC model."""
    batch = parallel.batch_sharding(mesh, 4)

    def apply(tiles: np.ndarray) -> np.ndarray:
        return np.asarray(_encode(graphdef, params, crop_size, jax.device_put(tiles, batch)))

    return apply


def embed(encoder: Callable, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Runs `encoder` over `images` in batches of `batch_size`, padding the last one (no recompile)."""
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"embed expects uint8 images [N, H, W, 3], got {images.dtype} {images.shape}")
    result = batched(encoder, images, batch_size).astype(np.float32)
    if not np.isfinite(result).all():
        raise FloatingPointError("encoder produced non-finite embeddings; the checkpoint may be corrupt")
    return result


def encoder_features(graphdef: nnx.GraphDef, params: dict, crop_size: int, mesh: jax.sharding.Mesh,
                     batch_size: int) -> Features:
    """A model's encoder as a features function over any number of tiles, in padded batches of `batch_size`."""
    encoder = make_encoder(graphdef, params, crop_size, mesh)
    return lambda images: embed(encoder, images, batch_size)


def run_features(run: Run, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Features:
    """A loaded run's encoder over the evaluation tiles of `config` (which must hold the run's crop)."""
    tile = config.data.tile_size
    if run.crop_size > tile:
        raise UserError(f"{run.directory} was trained on {run.crop_size} px crops; the evaluation tiles are only "
                        f"{tile} px (config.data.tile_size): evaluate on tiles at least that large.")
    return encoder_features(run.graphdef, run.params, run.crop_size, mesh, config.eval.batch_size)


def colour_statistics(images: np.ndarray, crop_size: int) -> np.ndarray:
    """The raw-colour baseline 'embedding': per-channel mean and std of the centre crop, [N, 6]."""
    crop = np.asarray(center_crop(jnp.asarray(images), crop_size))
    return np.concatenate([crop.mean(axis=(1, 2)), crop.std(axis=(1, 2))], axis=1).astype(np.float32)
