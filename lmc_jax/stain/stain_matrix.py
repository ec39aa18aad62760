"""What stain-matrix normalizers (Macenko, Vahadane) share once each image's stains are estimated.

Each method supplies only `estimate(pixels [G, 3, N], config) -> Estimate`; rebuilding an image with
the target stains, per-group batching and fitting a target are the same for both.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.stain import planar, robust


class Estimate(NamedTuple):
    """A group's stain estimates and flags (one row per image, or per pooled pixel set)."""

    stain_matrix: jax.Array  # [G, 2, 3]
    max_concentrations: jax.Array  # [G, 2]
    concentrations: jax.Array  # [G, 2, N]
    flag: jax.Array  # int32 [G]


Estimator = Callable[[jax.Array, Any], Estimate]


def flagged_estimate(stains: jax.Array, conc: jax.Array, no_tissue: jax.Array, stain_angle: jax.Array,
                     config: Any) -> Estimate:
    """A group's Estimate from its stains [G, 2, 3] and concentrations [G, 2, N]: maxima at config.max_percentile,
    NO_TISSUE where `no_tissue`, DEGENERATE where the stains are closer than config.min_stain_angle (radians
    `stain_angle` [G]), a maximum vanishes or anything is non-finite."""
    maxima = robust.masked_quantile(conc, True, config.max_percentile / 100.0)
    finite = jnp.all(jnp.isfinite(stains), axis=(1, 2)) & jnp.all(jnp.isfinite(maxima), axis=1)
    degenerate = (stain_angle < config.min_stain_angle) | jnp.any(maxima <= 1e-6, axis=1) | ~finite
    flag = robust.combine_flags((no_tissue, robust.NO_TISSUE), (degenerate, robust.DEGENERATE))
    return Estimate(stains, maxima, conc, flag)


def _transform_group(images: jax.Array, params: Any, config: Any, estimate: Estimator) -> tuple[jax.Array, jax.Array]:
    """Normalize a group of images [G, H, W, 3] towards `params`; returns (images, flags [G])."""
    pixels = jax.vmap(planar.pixels)(images)
    found = estimate(pixels, config)
    normalized = found.flag == robust.NORMALIZED
    scale = params.max_concentrations / jnp.where(normalized[:, None], found.max_concentrations, 1.0)

    def rebuild(conc: jax.Array, image_scale: jax.Array) -> jax.Array:
        return config.io * jnp.exp(-planar.apply_matrix(conc * image_scale[:, None], params.stain_matrix))

    rebuilt = jnp.where(normalized[:, None, None], jax.vmap(rebuild)(found.concentrations, scale), pixels)
    return jax.vmap(planar.to_image)(rebuilt, images), found.flag


def transform(batch: jax.Array, params: Any, config: Any, estimate: Estimator, source: str) -> tuple[jax.Array, jax.Array]:
    """Normalize a batch [B, H, W, 3] to `params`' stains (call under jit); flagged images come back unchanged."""
    robust.check_batch(batch, source)
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)
    group = functools.partial(_transform_group, params=params, config=config, estimate=estimate)
    return robust.map_groups(group, batch)


def estimate_stains(batch: jax.Array, config: Any, estimate: Estimator, params_type: type, source: str) -> tuple[Any, jax.Array]:
    """Each image's own params (stain matrix [B, 2, 3], maxima [B, 2]) of type `params_type`, and flags [B]."""
    robust.check_batch(batch, source)

    def group(images: jax.Array) -> tuple[Any, jax.Array]:
        found = estimate(jax.vmap(planar.pixels)(images), config)
        return params_type(found.stain_matrix, found.max_concentrations), found.flag

    return robust.map_groups(group, batch)


def fit(target_images: jax.Array | np.ndarray, config: Any, estimate_stains_fn: Callable, params_type: type,
        source: str, cause: str) -> Any:
    """Target params from one image or the pooled pixels of several; ValueError (naming `cause`) without tissue."""
    found, flag = estimate_stains_fn(robust.pooled_pixels(target_images, source), config)
    robust.check_fitted(flag, source, cause)
    return params_type(found.stain_matrix[0], found.max_concentrations[0])
