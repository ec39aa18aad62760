"""Macenko et al. (ISBI 2009) stain normalization, batched and jitted, as torchstain's NumPy backend computes it.

Per image: optical density with background Io, pixels with OD ≥ beta in every channel, the plane of
the two leading eigenvectors of their OD covariance, the alpha / 100 - alpha percentiles of the
pixels' angles in that plane (the H and E vectors), least-squares concentrations and their 99th
percentile; the target's stain matrix and maximum concentrations then rebuild the image. Masks and
percentiles have fixed shapes, so one compiled function handles a whole batch; a tile without
tissue, or whose stain estimate is ill-conditioned, comes back unchanged with a flag (never NaN).
"""

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.stain import color, planar, robust
from lmc_jax.stain import params as params_io
from lmc_jax.stain import stain_matrix

REFERENCE_MAX_CONCENTRATIONS = np.array([1.9705, 1.0308])
"""torchstain's default target maximum H and E concentrations (with `color.DEFAULT_STAIN_MATRIX`)."""


@dataclasses.dataclass(frozen=True)
class MacenkoConfig:
    """Hyper-parameters (torchstain's defaults); hashable, so it is a static argument under jit."""

    io: float = 240.0  # transmitted (background) light intensity on the 0-255 scale
    alpha: float = 1.0  # percent: H and E are the alpha and (100 - alpha) percentile angles
    beta: float = 0.15  # OD below this in any channel marks a pixel transparent
    max_percentile: float = 99.0  # percentile of each stain's concentration used as its maximum
    min_tissue_fraction: float = 0.01  # fewer stained pixels than this fraction → flag NO_TISSUE
    min_stain_angle: float = 0.02  # radians between the H and E estimates below which → flag DEGENERATE

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field and its valid range."""
        params_io.check_fields(self, {
            "io": (1.0, math.inf),
            "alpha": (0.0, 50.0),
            "beta": (0.0, math.inf),
            "max_percentile": (50.0, 100.0),
            "min_tissue_fraction": (0.0, 1.0),
            "min_stain_angle": (0.0, math.pi / 2),
        })


class MacenkoParams(NamedTuple):
    """Target stains (a pytree): unit OD vectors [2, 3] (rows H, E) and maximum concentrations [2]."""

    stain_matrix: jax.Array
    max_concentrations: jax.Array

    @classmethod
    def reference(cls) -> "MacenkoParams":
        """Macenko's reference H&E vectors and torchstain's reference maxima: the fallback target."""
        return cls(
            jnp.asarray(color.DEFAULT_STAIN_MATRIX, jnp.float32),
            jnp.asarray(REFERENCE_MAX_CONCENTRATIONS, jnp.float32),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the method's name."""
        return {"method": "macenko", **params_io.to_lists(**self._asdict())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MacenkoParams":
        """Inverse of `to_dict`; raises naming the key that is missing or malformed."""
        params_io.check_method(data, "macenko")
        return cls(
            params_io.finite_array(data, "stain_matrix", (2, 3)),
            params_io.finite_array(data, "max_concentrations", (2,), positive=True),
        )


def _pseudo_angle(x: jax.Array, y: jax.Array) -> jax.Array:
    """A cheap strictly increasing function of atan2(y, x) on (-pi, pi], in (-2, 2] (the "diamond angle")."""
    ratio = y / jnp.maximum(jnp.abs(x) + jnp.abs(y), 1e-30)
    return jnp.where(x >= 0, ratio, jnp.where(y >= 0, 2.0 - ratio, -2.0 - ratio))


def _pseudo_to_angle(pseudo: jax.Array) -> jax.Array:
    """Inverse of `_pseudo_angle`: the angle in radians of a pseudo-angle."""
    y = jnp.where(pseudo > 1.0, 2.0 - pseudo, jnp.where(pseudo < -1.0, -2.0 - pseudo, pseudo))
    x = jnp.where(jnp.abs(pseudo) > 1.0, jnp.abs(y) - 1.0, 1.0 - jnp.abs(y))
    return jnp.arctan2(y, x)


def _least_squares_inverse(stains: jax.Array) -> jax.Array:
    """[3, 2] matrix P with C = OD @ P the least-squares concentrations for stains [2, 3] (2x2 normal equations)."""
    gram = stains @ stains.T
    det = gram[0, 0] * gram[1, 1] - gram[0, 1] * gram[1, 0]
    det = jnp.where(jnp.abs(det) > 1e-12, det, 1.0)
    inverse = jnp.array([[gram[1, 1], -gram[0, 1]], [-gram[1, 0], gram[0, 0]]]) / det
    return stains.T @ inverse


def _weighted_covariance(od: jax.Array, mask: jax.Array, count: jax.Array) -> jax.Array:
    """Unbiased covariance [3, 3] of the masked columns of planar OD [3, N] (numpy.cov of them), as one GEMM."""
    centred = jnp.where(mask, od - robust.masked_mean(od, mask)[:, None], 0.0)
    products = jnp.dot(centred, centred.T, precision=jax.lax.Precision.HIGHEST)
    return products / jnp.maximum(count - 1.0, 1.0)


def _eigenvector(matrix: jax.Array, value: jax.Array) -> jax.Array:
    """Unit eigenvector of symmetric [3, 3] `matrix` for eigenvalue `value`: the longest cross product of two
    rows of (matrix − value·I), which are orthogonal to it."""
    rows = matrix - value * jnp.eye(3, dtype=matrix.dtype)
    candidates = jnp.stack([jnp.cross(rows[0], rows[1]), jnp.cross(rows[0], rows[2]), jnp.cross(rows[1], rows[2])])
    lengths = jnp.sum(candidates * candidates, axis=1)
    best = candidates[jnp.argmax(lengths)]
    return best / jnp.maximum(jnp.sqrt(jnp.max(lengths)), 1e-30)


def _leading_plane(covariance: jax.Array) -> jax.Array:
    """Eigenvectors [3, 2] of the second-largest and largest eigenvalues (numpy.linalg.eigh's last two
    columns, up to sign), in closed form (zeros for a zero matrix, whose tile is then flagged degenerate).

    XLA:CPU's eigh is a LAPACK custom call costing ~0.5 ms per 3x3 matrix, half of a whole tile's transform.
    """
    mean = jnp.trace(covariance) / 3.0
    off = covariance[0, 1] ** 2 + covariance[0, 2] ** 2 + covariance[1, 2] ** 2
    spread = jnp.sqrt((jnp.sum((jnp.diag(covariance) - mean) ** 2) + 2.0 * off) / 6.0)
    scaled = (covariance - mean * jnp.eye(3, dtype=covariance.dtype)) / jnp.maximum(spread, 1e-30)
    determinant = jnp.cross(scaled[0], scaled[1]) @ scaled[2]  # not jnp.linalg.det: an LU custom call on CPU
    angle = jnp.arccos(jnp.clip(determinant / 2.0, -1.0, 1.0)) / 3.0
    largest = mean + 2.0 * spread * jnp.cos(angle)
    smallest = mean + 2.0 * spread * jnp.cos(angle + 2.0 * math.pi / 3.0)
    top = _eigenvector(covariance, largest)
    second = _eigenvector(covariance, 3.0 * mean - largest - smallest)
    second = second - (second @ top) * top  # re-orthogonalise (rounding)
    second = second / jnp.maximum(jnp.linalg.norm(second), 1e-30)
    return jnp.stack([second, top], axis=1)


def _angle_plane(intensity: jax.Array, config: MacenkoConfig) -> tuple[jax.Array, ...]:
    """One image's OD [3, N], transparent-free mask and count, leading OD plane [3, 2] and pseudo-angles [N]."""
    # materialised once: fused into each reduction below, XLA:CPU would recompute the logs every time
    od = jax.lax.optimization_barrier(robust.optical_density(intensity, config.io))
    transparent_free = jnp.all(od >= config.beta, axis=0)
    count = robust.masked_count(transparent_free)
    plane = _leading_plane(_weighted_covariance(od, transparent_free, count))  # numpy.linalg.eigh(...)[1][:, 1:3]
    projected = planar.apply_matrix(od, plane)  # [2, N]
    return od, transparent_free, count, plane, _pseudo_angle(projected[0], projected[1])


def _stains(od: jax.Array, plane: jax.Array, angles: jax.Array) -> tuple[jax.Array, jax.Array]:
    """One image's H and E vectors [2, 3] from its extreme angles in the plane, and concentrations [2, N]."""
    extremes = jnp.stack([jnp.cos(angles), jnp.sin(angles)], axis=-1) @ plane.T  # [2, 3]: vMin, vMax
    stains = jnp.where(extremes[0, 0] > extremes[1, 0], extremes, extremes[::-1])  # haematoxylin first
    return stains, planar.apply_matrix(od, _least_squares_inverse(stains))


def _estimate(intensity: jax.Array, config: MacenkoConfig) -> stain_matrix.Estimate:
    """Macenko stain vectors, concentrations and maxima of a group of planar images [G, 3, N] (0-255).

    Per-image algebra is vmapped; the percentiles run on the group's rows together, which amortises
    their loop overhead (and keeps their shortcut a real branch, not a vmapped select).
    """
    od, transparent_free, count, plane, pseudo = jax.vmap(_angle_plane, in_axes=(0, None))(intensity, config)
    quantiles = jnp.array([config.alpha, 100.0 - config.alpha]) / 100.0
    angles = _pseudo_to_angle(robust.masked_quantile(pseudo[:, None], transparent_free[:, None], quantiles))
    stains, conc = jax.vmap(_stains)(od, plane, angles)
    tissue = robust.masked_count(jax.vmap(robust.tissue_mask, in_axes=(0, 0, None))(intensity, od, config.beta))
    no_tissue = (tissue < max(2.0, config.min_tissue_fraction * intensity.shape[-1])) | (count < 2)
    spread = jnp.abs(angles[:, 1] - angles[:, 0])
    return stain_matrix.flagged_estimate(stains, conc, no_tissue, spread, config)


@functools.partial(jax.jit, static_argnames=("config",))
def transform(
    batch: jax.Array, params: MacenkoParams, config: MacenkoConfig = MacenkoConfig()
) -> tuple[jax.Array, jax.Array]:
    """Normalize a batch [B, H, W, 3] (uint8, or float in [0, 1]) to the target stains in `params`.

    Returns (images of the input dtype, int32 flags [B] from `robust`); flagged images come back unchanged.
    """
    return stain_matrix.transform(batch, params, config, _estimate, "macenko.py")


@functools.partial(jax.jit, static_argnames=("config",))
def estimate_stains(batch: jax.Array, config: MacenkoConfig = MacenkoConfig()) -> tuple[MacenkoParams, jax.Array]:
    """Each image's own Macenko params (stain matrix [B, 2, 3], maxima [B, 2]) and flags [B]."""
    return stain_matrix.estimate_stains(batch, config, _estimate, MacenkoParams, "macenko.py")


def fit(target_images: jax.Array | np.ndarray, config: MacenkoConfig = MacenkoConfig()) -> MacenkoParams:
    """Target params from one image [H, W, 3] or the pooled pixels of several [B, H, W, 3].

    Raises ValueError when the target has no usable tissue (the transform would have nothing to match).
    """
    cause = f"fewer than {config.min_tissue_fraction:.0%} stained pixels, or one flat colour"
    return stain_matrix.fit(target_images, config, estimate_stains, MacenkoParams, "macenko.py", cause)
