"""Heat-map maths, pure and jitted: Gaussian targets at annotated centres, the focal / weighted BCE losses, and the
local maxima a peak finder starts from.

Coordinates are continuous (y, x) in pixels: pixel (i, j) covers [i, i+1) × [j, j+1), so cell (i, j) of a heat map
with stride s has its centre at ((i + 0.5)·s, (j + 0.5)·s).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax


def cell_centres(size: int, stride: int) -> jax.Array:
    """Centres (in pixels) of the `size` cells of one heat-map axis with `stride` pixels per cell, float32 [size]."""
    return (jnp.arange(size, dtype=jnp.float32) + 0.5) * stride


@functools.partial(jax.jit, static_argnames=("shape", "stride"))
def gaussian_targets(centres: jax.Array, valid: jax.Array, sigma: jax.Array, *, shape: tuple[int, int],
                     stride: int) -> jax.Array:
    """Heat-map targets [B, H, W]: per cell the largest exp(−d²/2σ²) over the window's valid centres, d the distance
    in pixels from the cell's centre; 0 where a window has none.

    centres: [B, K, 2] (y, x) in the window's pixels; valid: [B, K] bool (padding rows False); sigma: [B] pixels.
    """
    ys, xs = cell_centres(shape[0], stride), cell_centres(shape[1], stride)
    dy = ys[None, :, None, None] - centres[:, None, None, :, 0]  # [B, H, 1, K]
    dx = xs[None, None, :, None] - centres[:, None, None, :, 1]  # [B, 1, W, K]
    g = jnp.exp(-(dy**2 + dx**2) / (2 * sigma[:, None, None, None] ** 2))
    return jnp.max(jnp.where(valid[:, None, None, :], g, 0.0), axis=-1, initial=0.0)


def focal_loss(logits: jax.Array, targets: jax.Array, gamma: float = 2.0) -> jax.Array:
    """Focal loss for soft targets (the quality focal loss of Li et al. 2020): Σ |t − p|^γ · BCE(logit, t), divided by
    max(Σ t, 1) so that images with more objects do not dominate; γ = 0 is plain BCE over that normaliser."""
    p = jax.nn.sigmoid(logits)
    bce = optax.sigmoid_binary_cross_entropy(logits, targets)
    return jnp.sum(jnp.abs(targets - p) ** gamma * bce) / jnp.maximum(jnp.sum(targets), 1.0)


def weighted_bce(logits: jax.Array, targets: jax.Array, pos_weight: float = 50.0) -> jax.Array:
    """Mean BCE with each cell weighted 1 + (pos_weight − 1)·t: cells near a centre weigh up to pos_weight."""
    weights = 1.0 + (pos_weight - 1.0) * targets
    return jnp.sum(weights * optax.sigmoid_binary_cross_entropy(logits, targets)) / jnp.sum(weights)


LOSSES = {"focal": focal_loss, "weighted_bce": weighted_bce}


@functools.partial(jax.jit, static_argnames=("window",))
def local_maxima(heat: jax.Array, window: int) -> jax.Array:
    """Bool [H, W]: cells equal to the maximum of their window × window neighbourhood (plateaus included; cells
    outside the map do not count)."""
    pooled = jax.lax.reduce_window(heat, -jnp.inf, jax.lax.max, (window, window), (1, 1), "SAME")
    return heat >= pooled
