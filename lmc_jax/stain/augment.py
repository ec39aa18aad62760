"""Training views: random crop + dihedral symmetry, then on-device H&E stain and photometric jitter.

Pure functions of (key, tiles, static config), jitted. Each example's key is folded from the view
index and the example's index in the global batch, so a view never depends on batch sharding.
The optional RandStainNA-style Lab statistics sampling, blur and additive noise (off by default)
draw from their own key stream, so turning them on leaves every other draw unchanged. They sample
the families of the `lab_shift` and `jpeg_blur` evaluation sites (`sites.py`): with them on, those
sites are no longer unseen and their invariance scores become partly circular.
The optional scale (magnification) change (`scale.py`, off unless `scale` is given) runs between the
geometric crop/flip and the stain jitter, from a third key stream (fold_in(key, scale.SCALE_STREAM)),
so with `scale=None` every view is bit-identical to the views without it, and with it on the stain
draws are unchanged.
"""

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.config_edit import dataclass_from
from lmc_jax.stain import color, planar
from lmc_jax.stain import scale as scale_views
from lmc_jax.stain.scale import ScaleAugConfig

TISSUE_OD_RAMP = (0.15, 0.45)
"""Summed RGB optical density over which stain shifts fade in: 0 on white glass (≈ 0.11-0.15 on the
embedded slide), full from 0.45 (Macenko's 0.15 per-channel tissue threshold, summed)."""
VIEW_OD_EPS = 1.0 / 255.0
"""Darkest intensity in the stain path (one uint8 step): black pixels get OD log(255) ≈ 5.5, not 13.8."""
GRAY_WEIGHTS = np.array([0.299, 0.587, 0.114])
"""Luma weights for the mean grey level that contrast jitter pivots around."""

LAB_MEAN_SPREAD = np.array([11.94, 4.17, 4.77])
"""Std across tiles of the per-tile CIE-Lab channel means (L, a, b) of the embedded slide (480 tissue
tiles of 64 px): the unit of `lab_mean_shift`, as RandStainNA scales its templates by dataset statistics."""

_STAIN = np.asarray(color.DEFAULT_STAIN_MATRIX, dtype=np.float64)  # [2, 3]
_STAIN_PINV = np.linalg.pinv(_STAIN)  # [3, 2]
_OFF_STAIN_PLANE = np.eye(3) - _STAIN_PINV @ _STAIN  # keeps the OD part the two stains do not explain


def _tangent_bases(vectors: np.ndarray) -> np.ndarray:
    """Orthonormal bases [S, 2, 3] of the planes perpendicular to each unit row of `vectors`."""
    unit = vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)
    first = np.cross(unit, np.array([0.0, 0.0, 1.0]))
    first /= np.linalg.norm(first, axis=-1, keepdims=True)
    return np.stack([first, np.cross(unit, first)], axis=1)


_STAIN_TANGENTS = _tangent_bases(_STAIN)

# Every example draws one fixed-layout vector of U[0, 1) numbers; each component reads its own slots,
# so switching a knob off leaves every other draw (and the geometry) unchanged. One draw also keeps
# compile time low: each separate threefry call adds ~0.1 s of XLA compilation on CPU.
_SLOT_SIZES = (
    ("offset", 2),
    ("symmetry", 3),
    ("angle", 2),
    ("direction", 2),
    ("vector_scale", 6),
    ("concentration_scale", 2),
    ("concentration_shift", 2),
    ("hed_scale", 3),
    ("hed_shift", 3),
    ("brightness", 1),
    ("contrast", 1),
    ("gamma", 1),
)
_SLOT_EDGES = np.cumsum([0] + [size for _, size in _SLOT_SIZES])
_SLOTS = {name: slice(int(a), int(b)) for (name, _), a, b in zip(_SLOT_SIZES, _SLOT_EDGES, _SLOT_EDGES[1:])}
_NUM_DRAWS = int(_SLOT_EDGES[-1])

# The optional Lab/blur/noise knobs read a second vector, from key fold_in(key, _EXTRA_STREAM).
_EXTRA_STREAM = 1
_EXTRA_SLOT_SIZES = (("lab_mean", 3), ("lab_std", 3), ("blur", 1), ("noise", 1))
_EXTRA_EDGES = np.cumsum([0] + [size for _, size in _EXTRA_SLOT_SIZES])
_EXTRA_SLOTS = {
    name: slice(int(a), int(b))
    for (name, _), a, b in zip(_EXTRA_SLOT_SIZES, _EXTRA_EDGES[:-1], _EXTRA_EDGES[1:], strict=True)
}
_NUM_EXTRA_DRAWS = int(_EXTRA_EDGES[-1])
# the scale views read a third stream, fold_in(key, scale_views.SCALE_STREAM)
assert scale_views.SCALE_STREAM != _EXTRA_STREAM, "the scale and extra key streams must differ"

_FACTOR_KNOBS = (
    "stain_vector_scale",
    "concentration_scale",
    "hed_jitter",
    "brightness",
    "contrast",
    "gamma",
    "lab_std_scale",
    "noise_std",
)


@dataclasses.dataclass(frozen=True)
class StainAugConfig:
    """Strengths of the training stain/photometric jitter (0 disables that part); hashable for jit."""

    stain_vector_angle: float = 0.15  # radians: H and E OD vectors each turned by U(-a, a) in a random direction
    stain_vector_scale: float = 0.15  # each RGB component of each OD vector *= U(1-s, 1+s) (the stain's hue)
    concentration_scale: float = 0.3  # per-stain concentration c *= U(1-s, 1+s)
    concentration_shift: float = 0.1  # per-stain c += U(-s, s) in OD units, faded out on background
    hed_jitter: float = 0.05  # Tellez 2018 in skimage HED units: hed * U(1-s, 1+s) + U(-s, s)
    brightness: float = 0.1  # intensity *= U(1-s, 1+s)
    contrast: float = 0.15  # (x - mean grey) * U(1-s, 1+s) + mean grey
    gamma: float = 0.1  # x ** U(1-s, 1+s), applied after the stain jitter, before brightness
    lab_mean_shift: float = 0.0  # RandStainNA-style: Lab channel means += U(-s, s) * LAB_MEAN_SPREAD
    lab_std_scale: float = 0.0  # RandStainNA-style: Lab channel deviations from the mean *= U(1-s, 1+s)
    blur_sigma: float = 0.0  # Gaussian blur of sigma U(0, s) pixels (kernel radius ceil(3 s))
    noise_std: float = 0.0  # additive Gaussian noise of std U(0, s) in [0, 1] intensity units

    def __post_init__(self) -> None:
        """Cast every strength to float and refuse values that would flip signs or give NaN."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"StainAugConfig.{field.name}={value!r}: must be a number; set it to a float ≥ 0."
                )
            value = float(value)
            limit = math.pi / 2 if field.name == "stain_vector_angle" else 1.0
            bounded = field.name in _FACTOR_KNOBS or field.name == "stain_vector_angle"
            if not math.isfinite(value) or value < 0 or (bounded and value >= limit):
                bound = f"[0, {limit:g})" if bounded else "[0, inf)"
                raise ValueError(
                    f"StainAugConfig.{field.name}={value!r} is out of range; choose a value in {bound}."
                )
            object.__setattr__(self, field.name, value)

    @classmethod
    def from_config(cls, cd: Mapping[str, Any] | Any) -> "StainAugConfig":
        """Build from a ConfigDict/mapping of strengths; missing keys take defaults, unknown keys raise."""
        return dataclass_from(cls, cd, "config.lmc.stain")

    @property
    def uses_extra(self) -> bool:
        """Whether any of the Lab statistics, blur or noise knobs is on (they draw from a second key stream)."""
        return self.lab_mean_shift > 0 or self.lab_std_scale > 0 or self.blur_sigma > 0 or self.noise_std > 0

    @property
    def uses_stain_matrix(self) -> bool:
        """Whether any stain-vector or concentration jitter is on."""
        return (
            self.stain_vector_angle > 0
            or self.stain_vector_scale > 0
            or self.concentration_scale > 0
            or self.concentration_shift > 0
        )


def _symmetric(
    draws: jax.Array, slot: str, strength: float, centre: float = 0.0, slots: Mapping[str, slice] = _SLOTS
) -> jax.Array:
    """Map a slot's U[0, 1) draws to U[centre - strength, centre + strength)."""
    return centre + strength * (2.0 * draws[slots[slot]] - 1.0)


def _perturbed_stains(draws: jax.Array, cfg: StainAugConfig) -> jax.Array:
    """Default H&E OD vectors [2, 3], each turned by a random small angle and scaled per RGB channel."""
    stains = jnp.asarray(_STAIN, jnp.float32)
    if cfg.stain_vector_angle > 0:
        theta = _symmetric(draws, "angle", cfg.stain_vector_angle)[:, None]
        phi = _symmetric(draws, "direction", math.pi)
        tangents = jnp.asarray(_STAIN_TANGENTS, jnp.float32)
        direction = jnp.cos(phi)[:, None] * tangents[:, 0] + jnp.sin(phi)[:, None] * tangents[:, 1]
        stains = jnp.cos(theta) * stains + jnp.sin(theta) * direction
    if cfg.stain_vector_scale > 0:
        stains = stains * _symmetric(draws, "vector_scale", cfg.stain_vector_scale, 1.0).reshape(2, 3)
    return jnp.maximum(stains, 0.0)  # a stain cannot emit light


def _od_affine(draws: jax.Array, cfg: StainAugConfig) -> tuple[jax.Array, jax.Array]:
    """Random per-example OD map (A [3, 3], b [3]): od' = od @ A + tissue_weight * b.

    Composes (1) decompose with the default H&E matrix, jitter concentrations c*alpha + beta and
    recompose with perturbed stain vectors, keeping the off-plane residual, and (2) Tellez HED jitter.
    """
    a = jnp.eye(3, dtype=jnp.float32)
    b = jnp.zeros((3,), jnp.float32)
    if cfg.uses_stain_matrix:
        stains = _perturbed_stains(draws, cfg)
        alpha = _symmetric(draws, "concentration_scale", cfg.concentration_scale, 1.0)
        beta = _symmetric(draws, "concentration_shift", cfg.concentration_shift)
        pinv = jnp.asarray(_STAIN_PINV, jnp.float32)
        a = jnp.asarray(_OFF_STAIN_PLANE, jnp.float32) + color.apply_matrix(pinv * alpha, stains)
        b = color.apply_matrix(beta, stains)
    if cfg.hed_jitter > 0:
        alpha_h = _symmetric(draws, "hed_scale", cfg.hed_jitter, 1.0)
        beta_h = _symmetric(draws, "hed_shift", cfg.hed_jitter)
        hed_map = color.apply_matrix(jnp.asarray(color.HED_FROM_RGB, jnp.float32) * alpha_h, color.RGB_FROM_HED)
        a = color.apply_matrix(a, hed_map)
        b = color.apply_matrix(b, hed_map) + color.apply_matrix(color.HED_LOG_ADJUST * beta_h, color.RGB_FROM_HED)
    return a, b


def _jitter_colour(draws: jax.Array, image: jax.Array, cfg: StainAugConfig) -> jax.Array:
    """Stain jitter and gamma in OD space, then brightness and contrast; float [H, W, 3] in [0, 1] out.

    Gamma is applied as an OD scale (x**g = exp(-g * OD)), so it rides on the stain path's log/exp.
    """
    stain_on = cfg.uses_stain_matrix or cfg.hed_jitter > 0
    if stain_on or cfg.gamma > 0:
        od = color.rgb_to_od(image, VIEW_OD_EPS)
        if stain_on:
            a, b = _od_affine(draws, cfg)
            low, high = TISSUE_OD_RAMP
            tissue = jnp.clip((jnp.sum(od, -1, keepdims=True) - low) / (high - low), 0.0, 1.0)
            od = color.apply_matrix(od, a) + tissue * b
        if cfg.gamma > 0:
            od = od * _symmetric(draws, "gamma", cfg.gamma, 1.0)
        image = color.od_to_rgb(od)
    if cfg.brightness > 0:
        image = jnp.clip(image * _symmetric(draws, "brightness", cfg.brightness, 1.0), 0.0, 1.0)
    if cfg.contrast > 0:
        factor = _symmetric(draws, "contrast", cfg.contrast, 1.0)
        grey = jnp.sum(jnp.mean(image, axis=(0, 1)) * jnp.asarray(GRAY_WEIGHTS, image.dtype))
        image = jnp.clip((image - grey) * factor + grey, 0.0, 1.0)
    return image


def _lab_statistics(draws: jax.Array, image: jax.Array, cfg: StainAugConfig) -> jax.Array:
    """RandStainNA-style: move the view's Lab channel means and scale its deviations; [H, W, 3] in [0, 1]."""
    lab = planar.rgb_to_lab(jnp.moveaxis(image, -1, 0))
    mean = jnp.mean(lab, axis=(1, 2), keepdims=True)
    scale = _symmetric(draws, "lab_std", cfg.lab_std_scale, 1.0, _EXTRA_SLOTS)[:, None, None]
    shift = _symmetric(draws, "lab_mean", cfg.lab_mean_shift, 0.0, _EXTRA_SLOTS) * LAB_MEAN_SPREAD.astype(np.float32)
    shift = shift[:, None, None]
    return jnp.moveaxis(planar.lab_to_rgb((lab - mean) * scale + mean + shift), 0, -1)


def _gaussian_blur(image: jax.Array, sigma: jax.Array, max_sigma: float) -> jax.Array:
    """Separable Gaussian blur of [H, W, 3] by a traced sigma ≤ max_sigma, reflected edges; sigma → 0 is identity."""
    radius = max(1, math.ceil(3.0 * max_sigma))
    offsets = jnp.arange(-radius, radius + 1, dtype=image.dtype)
    weights = jnp.exp(-0.5 * jnp.square(offsets / jnp.maximum(sigma, 1e-3)))
    weights = weights / jnp.sum(weights)
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = jnp.pad(image, pad, mode="reflect" if image.shape[axis] > radius else "edge")
        size = image.shape[axis]
        image = sum(
            weights[k] * jax.lax.slice_in_dim(padded, k, k + size, axis=axis) for k in range(2 * radius + 1)
        )
    return image


def _extra_jitter(key: jax.Array, image: jax.Array, cfg: StainAugConfig) -> jax.Array:
    """Lab statistics sampling, then blur, then additive noise, from the view's second key stream."""
    extra_key = jax.random.fold_in(key, _EXTRA_STREAM)
    draws = jax.random.uniform(extra_key, (_NUM_EXTRA_DRAWS,), jnp.float32)
    if cfg.lab_mean_shift > 0 or cfg.lab_std_scale > 0:
        image = _lab_statistics(draws, image, cfg)
    if cfg.blur_sigma > 0:
        image = _gaussian_blur(image, cfg.blur_sigma * draws[_EXTRA_SLOTS["blur"]][0], cfg.blur_sigma)
    if cfg.noise_std > 0:
        noise = jax.random.normal(jax.random.fold_in(extra_key, 0), image.shape, image.dtype)
        image = image + cfg.noise_std * draws[_EXTRA_SLOTS["noise"]][0] * noise
    return jnp.clip(image, 0.0, 1.0)


def _geometric(draws: jax.Array, tile: jax.Array, crop_size: int) -> jax.Array:
    """Random crop_size² crop of one tile [H, W, 3] under a uniform dihedral symmetry; float32 [0, 1]."""
    positions = jnp.array([tile.shape[0] - crop_size + 1, tile.shape[1] - crop_size + 1], jnp.float32)
    offsets = jnp.floor(draws[_SLOTS["offset"]] * positions).astype(jnp.int32)
    offsets = jnp.minimum(offsets, positions.astype(jnp.int32) - 1)
    crop = jax.lax.dynamic_slice(tile, (offsets[0], offsets[1], 0), (crop_size, crop_size, tile.shape[2]))
    transpose, flip_h, flip_v = draws[_SLOTS["symmetry"]] < 0.5
    # transpose x h-flip x v-flip covers all 8 flips/90° rotations, each with probability 1/8
    crop = jnp.where(transpose, jnp.swapaxes(crop, 0, 1), crop)
    crop = jnp.where(flip_h, crop[:, ::-1], crop)
    crop = jnp.where(flip_v, crop[::-1], crop)
    return jnp.clip(color.to_unit_float(crop).astype(jnp.float32), 0.0, 1.0)


def _one_view(
    key: jax.Array,
    tile: jax.Array,
    crop_size: int,
    stain: StainAugConfig | None,
    scale: ScaleAugConfig | None = None,
) -> jax.Array:
    """One example's view from one fixed-layout draw: geometry and colour read separate slots.

    The optional magnification change runs between geometry and colour, from its own key stream.
    """
    draws = jax.random.uniform(key, (_NUM_DRAWS,), jnp.float32)
    image = _geometric(draws, tile, crop_size)
    if scale is not None:
        image = scale_views.scale_view(key, image, scale)
    if stain is None:
        return image
    # materialise the crop: fused with the flip selects, XLA:CPU's log/exp loop ran 2-3x slower
    image = _jitter_colour(draws, jax.lax.optimization_barrier(image), stain)
    return _extra_jitter(key, image, stain) if stain.uses_extra else image


def _check_tiles(shape: tuple[int, ...], crop_size: int) -> None:
    """Raise if tiles are not [B, H, W, 3] or the crop does not fit."""
    if len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"lmc_jax/stain/augment.py: tiles must be [B, H, W, 3], got shape {shape}.")
    if not 1 <= crop_size <= min(shape[1], shape[2]):
        raise ValueError(
            f"lmc_jax/stain/augment.py: crop_size={crop_size} does not fit tiles of {shape[1]}x{shape[2]}; "
            "choose 1 <= crop_size <= the tile size."
        )


@functools.partial(jax.jit, static_argnames=("num_views", "crop_size", "stain", "scale"))
def make_views(
    key: jax.Array,
    tiles: jax.Array,
    *,
    num_views: int,
    crop_size: int,
    stain: StainAugConfig | None,
    scale: ScaleAugConfig | None = None,
) -> jax.Array:
    """K random views [K, B, C, C, 3] float32 in [0, 1] of uint8 tiles [B, T, T, 3].

    View v of example i uses key fold_in(fold_in(key, v), i); `stain=None` gives geometric views;
    `scale` (a ScaleAugConfig) also renders each view at a random magnification (`scale.py`).
    """
    _check_tiles(tiles.shape, crop_size)
    if num_views < 1:
        raise ValueError(f"lmc_jax/stain/augment.py: num_views={num_views}; ask for at least 1 view.")
    example_ids = jnp.arange(tiles.shape[0], dtype=jnp.uint32)
    per_example = jax.vmap(functools.partial(_one_view, crop_size=crop_size, stain=stain, scale=scale))

    def view(view_index: jax.Array) -> jax.Array:
        view_key = jax.random.fold_in(key, view_index)
        keys = jax.vmap(lambda i: jax.random.fold_in(view_key, i))(example_ids)
        return per_example(keys, tiles)

    return jax.vmap(view)(jnp.arange(num_views, dtype=jnp.uint32))


@functools.partial(jax.jit, static_argnames=("crop_size",))
def center_crop(tiles: jax.Array, crop_size: int) -> jax.Array:
    """Central crop_size² crop of tiles [B, H, W, 3] (uint8, or float in [0, 1]) as float32 in [0, 1]."""
    _check_tiles(tiles.shape, crop_size)
    top = (tiles.shape[1] - crop_size) // 2
    left = (tiles.shape[2] - crop_size) // 2
    crop = tiles[:, top : top + crop_size, left : left + crop_size]
    return jnp.clip(color.to_unit_float(crop).astype(jnp.float32), 0.0, 1.0)
