"""Scale (magnification) views: a training view rendered as if seen through another objective.

One view [C, C, 3] (float32 in [0, 1], after the geometric crop/flip of `augment._geometric`) draws
one of three modes from its own key stream, `fold_in(view_key, SCALE_STREAM)`:

- identity, with probability `identity_prob` (1/3 by default): the view is returned unchanged
  (bit-identical), so a share of the views stays at the slide's native magnification;
- higher magnification (zoom), with probability (1 - identity_prob) / 2: the field of view shrinks to a
  centred square of side C / z, resized back up to C x C by bilinear interpolation. z is log-uniform on
  [1, max_zoom] (z = max_zoom ** u, u ~ U[0, 1)): scale is multiplicative, so every octave of zoom is as
  likely as any other. Interpolation cannot add the detail a real higher-power objective would resolve:
  the zoomed view is smoother than a true 40x scan of the same field;
- lower magnification (down-sampling), with probability (1 - identity_prob) / 2: resolution loss by a
  log-uniform factor d on [1, max_downsample], with the same field of view (the tile holds no context
  beyond the view, so a real lower-power view, which would see more tissue around it, cannot be
  rendered; only its coarser sampling and blur are). The view is (1) blurred by a Gaussian PSF of sigma
  `blur_sigma * (d - 1) / (max_downsample - 1)` view pixels (0 at d = 1, blur_sigma at the largest
  down-sampling: a lower-NA objective blurs as well as samples coarser), (2) anti-aliased and sampled
  onto a grid of ceil(C / d) pixels of side d centred on the view's centre: each coarse pixel is a
  tent-weighted mean (half-width d: the pixel-area box of side d convolved with itself) of the fine
  pixels around it, a pre-filter matched to d (no naive striding; at non-integer d the tent leaves
  ~3x less aliased amplitude than the bare box, the sensor's pixel area), so detail finer than the
  coarse grid is suppressed instead of folding back as a false low-frequency pattern, and (3)
  bilinearly up-sampled back to C x C.

Every mode is a separable linear map: out = M @ image @ M.T per channel, with one C x C matrix M built
from the traced factor (z or d), so the output shape stays static while the scale is traced, and the
function jits and vmaps. Every M is mirror-symmetric (M[C-1-i, C-1-j] = M[i, j]) and maps the view's
centre (C / 2 in pixel-edge coordinates) to itself, so the tile's centre stays at the centre; its rows
are non-negative and sum to 1 (edge tents and PSF rows are clipped to the view and renormalised), so
values stay in [0, 1] and a flat view stays flat. Same key -> same view.

In `augment.make_views` the order within a view is geometric crop/flip -> scale -> stain jitter: the
crop fixes the field of view whose centre the magnification change keeps; the resampling acts on the
recorded light intensities, which is what an objective and a sensor average; and the colour/camera part
(stain matrix, gamma, brightness, contrast around the view's mean grey, the optional Lab statistics,
blur and additive noise) then acts on the pixels the model will see, as a scanner records after its
optics: noise added before a down-sampling would be averaged away, and the stain path's background
fade and contrast pivot would be computed on pixels the zoom discards.
"""

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from lmc_jax.config_edit import dataclass_from

SCALE_STREAM = 2
"""Tag folded into a view's key for its scale draws (`augment._EXTRA_STREAM` is 1, the main draws use the key)."""
_ENABLE_KEY = "views"
"""The config switch that `from_config` strips: it says whether to build a ScaleAugConfig at all."""

IDENTITY, ZOOM, DOWNSAMPLE = 0, 1, 2
"""Mode numbers returned by `sample_scale`."""


@dataclasses.dataclass(frozen=True)
class ScaleAugConfig:
    """Ranges of the magnification change of a training view; hashable for jit."""

    max_zoom: float = 2.0  # zoom z log-uniform on [1, max_zoom]: field of view 1/z of the view's, centred
    max_downsample: float = 4.0  # down-sampling d log-uniform on [1, max_downsample], area pre-filter, back up
    blur_sigma: float = 1.0  # optical PSF sigma (view pixels) at d = max_downsample, linear in d - 1
    identity_prob: float = 1.0 / 3.0  # share of views left at native magnification; zoom and down-sampling split the rest

    def __post_init__(self) -> None:
        """Cast every field to float and refuse values without meaning (factors below 1, NaN, ...)."""
        lower = {"max_zoom": 1.0, "max_downsample": 1.0, "blur_sigma": 0.0, "identity_prob": 0.0}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"ScaleAugConfig.{field.name}={value!r}: must be a number.")
            value = float(value)
            upper = 1.0 if field.name == "identity_prob" else math.inf
            if not math.isfinite(value) or not lower[field.name] <= value <= upper:
                bound = f"[{lower[field.name]:g}, {upper:g}]" if math.isfinite(upper) else f"[{lower[field.name]:g}, inf)"
                raise ValueError(
                    f"ScaleAugConfig.{field.name}={value!r} is out of range; choose a finite value in {bound}."
                )
            object.__setattr__(self, field.name, value)

    @classmethod
    def from_config(cls, cd: Mapping[str, Any] | Any) -> "ScaleAugConfig":
        """Build from `config.lmc.scale`; its `views` switch is ignored, missing keys take defaults, unknown raise."""
        return dataclass_from(cls, cd, "config.lmc.scale", ignored=(_ENABLE_KEY,))


def _gaussian_matrix(size: int, sigma: jax.Array) -> jax.Array:
    """[size, size] Gaussian PSF of a traced sigma (pixels), rows clipped to the view and renormalised; sigma → 0 is I."""
    index = jnp.arange(size, dtype=jnp.float32)
    weights = jnp.exp(-0.5 * jnp.square((index[:, None] - index[None, :]) / jnp.maximum(sigma, 1e-3)))
    return weights / jnp.sum(weights, axis=1, keepdims=True)


def resample_matrix(size: int, zoom: jax.Array, factor: jax.Array, sigma: jax.Array | None = None) -> jax.Array:
    """[size, size] map M = up @ prefilter @ psf of a centred zoom ≥ 1 and/or down-sampling `factor` ≥ 1 (traced).

    psf: Gaussian of `sigma` pixels (None: none). prefilter: n = ceil(size / factor) coarse pixels of side
    `factor`, centred on the view's centre; coarse pixel k is the tent-weighted mean (half-width `factor`:
    the box of side `factor` convolved with itself, the antialiased linear kernel of
    `jax.image.scale_and_translate`) of the fine pixels around it, rows clipped to the view and
    renormalised. up: bilinear sampling of the coarse grid at the output pixel centres x, which sit at
    coarse index (x - size/2) / (zoom * factor) + (n - 1) / 2, clamped to the n real coarse pixels; the
    coarse rows beyond n get zero weight, so the static shape holds for every traced factor. At factor = 1
    the prefilter is the identity (tents of half-width 1 on the pixel centres) and M is a bilinear zoom;
    zoom = factor = 1 without psf gives exactly the identity matrix.
    """
    zoom = jnp.asarray(zoom, jnp.float32)
    factor = jnp.asarray(factor, jnp.float32)
    centres = jnp.arange(size, dtype=jnp.float32) + 0.5  # pixel centres; the view spans [0, size]
    coarse = jnp.arange(size, dtype=jnp.float32)
    count = jnp.ceil(size / factor - 1e-4)  # the 1e-4 keeps an exact divisor from gaining a spurious pixel
    coarse_centres = size / 2.0 + (coarse - (count - 1.0) / 2.0) * factor
    tent = jnp.maximum(0.0, 1.0 - jnp.abs(coarse_centres[:, None] - centres[None, :]) / factor)
    prefilter = tent / jnp.maximum(jnp.sum(tent, axis=1, keepdims=True), 1e-6)  # [coarse, fine]
    position = jnp.clip((centres - size / 2.0) / (zoom * factor) + (count - 1.0) / 2.0, 0.0, count - 1.0)
    up = jnp.maximum(0.0, 1.0 - jnp.abs(position[:, None] - coarse[None, :]))  # [out, coarse]
    matrix = jnp.matmul(up, prefilter, precision=jax.lax.Precision.HIGHEST)
    if sigma is not None:
        matrix = jnp.matmul(matrix, _gaussian_matrix(size, jnp.asarray(sigma, jnp.float32)),
                            precision=jax.lax.Precision.HIGHEST)
    return matrix


def zoom_matrix(size: int, zoom: jax.Array) -> jax.Array:
    """[size, size] centred zoom by `zoom` ≥ 1: field of view size/zoom, bilinear up-sampling; 1 is the identity.

    Output pixel centre x samples the view at size/2 + (x - size/2) / zoom.
    """
    return resample_matrix(size, zoom, 1.0)


def downsample_matrix(size: int, factor: jax.Array, sigma: jax.Array | float | None = None) -> jax.Array:
    """[size, size] lower magnification: PSF of `sigma` px, anti-aliased down-sampling by `factor`, bilinear up."""
    return resample_matrix(size, 1.0, factor, sigma)


def apply_separable(image: jax.Array, matrix: jax.Array) -> jax.Array:
    """out[i, l] = sum_jk M[i, j] image[j, k] M[l, k] for each channel of [H, W, ch] (square, H = W)."""
    rows = jnp.einsum("ij,jkc->ikc", matrix, image, precision=jax.lax.Precision.HIGHEST)
    return jnp.einsum("lk,ikc->ilc", matrix, rows, precision=jax.lax.Precision.HIGHEST)


def sample_scale(key: jax.Array, cfg: ScaleAugConfig) -> tuple[jax.Array, jax.Array]:
    """(mode, factor) of one view from its own stream fold_in(key, SCALE_STREAM): IDENTITY/ZOOM/DOWNSAMPLE, z or d."""
    mode_draw, factor_draw = jax.random.uniform(jax.random.fold_in(key, SCALE_STREAM), (2,), jnp.float32)
    zoom_edge = cfg.identity_prob + 0.5 * (1.0 - cfg.identity_prob)
    mode = jnp.where(mode_draw < cfg.identity_prob, IDENTITY, jnp.where(mode_draw < zoom_edge, ZOOM, DOWNSAMPLE))
    top = jnp.where(mode == ZOOM, cfg.max_zoom, jnp.where(mode == DOWNSAMPLE, cfg.max_downsample, 1.0))
    return mode, jnp.power(top.astype(jnp.float32), factor_draw)  # log-uniform on [1, top]


def scale_matrix(mode: jax.Array, factor: jax.Array, size: int, cfg: ScaleAugConfig) -> jax.Array:
    """The [size, size] resampling matrix of a drawn (mode, factor); exactly the identity for IDENTITY."""
    down = mode == DOWNSAMPLE
    sigma = None
    if cfg.blur_sigma > 0 and cfg.max_downsample > 1:
        sigma = jnp.where(down, cfg.blur_sigma * (factor - 1.0) / (cfg.max_downsample - 1.0), 0.0)
    return resample_matrix(size, jnp.where(mode == ZOOM, factor, 1.0), jnp.where(down, factor, 1.0), sigma)


def scale_view(key: jax.Array, image: jax.Array, cfg: ScaleAugConfig) -> jax.Array:
    """One view [C, C, 3] float32 in [0, 1] at a random magnification (module docstring); identity is exact."""
    if image.ndim != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"lmc_jax/stain/scale.py: a view must be square [C, C, ch], got shape {image.shape}.")
    mode, factor = sample_scale(key, cfg)
    resampled = apply_separable(image, scale_matrix(mode, factor, image.shape[0], cfg))
    return jnp.where(mode == IDENTITY, image, jnp.clip(resampled, 0.0, 1.0))
