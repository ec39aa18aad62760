"""Channel-first ("planar", [3, N]) colour maths for whole images: what the normalizers compute in.

Same formulas and constants as `color.py` (which works channel-last, [..., 3]); on XLA:CPU,
elementwise log/exp over contiguous rows vectorise, while channel-last slices fall back to scalar
libm calls, and `pow`/`cbrt` are slower than exp(log) (measured 10-20x for a 224 px tile's Lab).
"""

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.stain import color, robust


def pixels(image: jax.Array) -> jax.Array:
    """Intensities [3, H*W] in [0, 255] of one image [H, W, 3] (uint8, or float in [0, 1]).

    Transposed in the input's dtype (a quarter of the bytes for uint8), then converted.
    """
    return robust.to_intensity(jax.lax.optimization_barrier(jnp.asarray(image).reshape(-1, 3).T))


def to_image(intensity: jax.Array, like: jax.Array) -> jax.Array:
    """Planar intensities [3, H*W] back to an image shaped and typed like `like` [H, W, 3]."""
    return robust.from_intensity(intensity.T.reshape(like.shape), like)


def apply_matrix(x: jax.Array, matrix: np.ndarray | jax.Array) -> jax.Array:
    """Rows out[j] = sum_i x[i] * matrix[i, j] of planar x [I, ...]: `color.apply_matrix` channel-first.

    A dot at HIGHEST precision (full float32 on accelerators too); on XLA:CPU the equivalent unrolled
    multiply-adds + stack ran 20x slower when fused behind exp/log.
    """
    matrix = jnp.asarray(matrix, x.dtype)
    return jnp.tensordot(matrix, x, axes=(0, 0), precision=jax.lax.Precision.HIGHEST)


def _power(x: jax.Array, exponent: float) -> jax.Array:
    """x ** exponent for x > 0 as exp(exponent * log x) (XLA:CPU's pow and cbrt do not vectorise)."""
    return jnp.exp(exponent * jnp.log(x))


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
    """sRGB [3, ...] in [0, 1] to CIE-Lab [3, ...] (D65, 2°), as `color.rgb_to_lab` / `skimage.color.rgb2lab`."""
    linear = jnp.where(rgb > 0.04045, _power((jnp.maximum(rgb, 0.04045) + 0.055) / 1.055, 2.4), rgb / 12.92)
    linear = jax.lax.optimization_barrier(linear)  # else XLA recomputes each row's exp/log for every use
    white = jnp.asarray(color.D65_WHITE, rgb.dtype).reshape((3,) + (1,) * (rgb.ndim - 1))
    xyz = apply_matrix(linear, color.XYZ_FROM_RGB.T) / white
    f = jnp.where(xyz > 0.008856, _power(jnp.maximum(xyz, 0.008856), 1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    f = jax.lax.optimization_barrier(f)
    return jnp.stack([116.0 * f[1] - 16.0, 500.0 * (f[0] - f[1]), 200.0 * (f[1] - f[2])])


def lab_to_rgb(lab: jax.Array) -> jax.Array:
    """CIE-Lab [3, ...] to sRGB [3, ...] clipped to [0, 1], as `color.lab_to_rgb` / `skimage.color.lab2rgb`."""
    fy = (lab[0] + 16.0) / 116.0
    f = jnp.stack([lab[1] / 500.0 + fy, fy, jnp.maximum(fy - lab[2] / 200.0, 0.0)])
    xyz = jnp.where(f > 0.2068966, f * f * f, (f - 16.0 / 116.0) / 7.787)
    white = jnp.asarray(color.D65_WHITE, lab.dtype).reshape((3,) + (1,) * (lab.ndim - 1))
    linear = apply_matrix(xyz * white, color.RGB_FROM_XYZ.T)
    rgb = jnp.where(
        linear > 0.0031308, 1.055 * _power(jnp.maximum(linear, 0.0031308), 1.0 / 2.4) - 0.055, linear * 12.92
    )
    return jnp.clip(rgb, 0.0, 1.0)
