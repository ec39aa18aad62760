"""Reinhard et al. (2001) colour transfer for H&E, batched and jitted, as torchstain's NumPy backend computes it.

Each image's CIE-Lab channels are standardised with their own mean and standard deviation (over
all pixels) and rescaled to the target's. A tile without tissue, or with a flat channel (standard
deviation below `min_std`, where the division would blow noise up or give NaN), comes back
unchanged with a flag.
"""

import dataclasses
import functools
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.stain import params as params_io
from lmc_jax.stain import planar, robust


@dataclasses.dataclass(frozen=True)
class ReinhardConfig:
    """Hyper-parameters; hashable, so it is a static argument under jit."""

    io: float = 240.0  # background intensity (0-255) of the optical density used by the tissue check
    beta: float = 0.15  # a tissue pixel has OD ≥ beta in every channel (Macenko's threshold)
    min_tissue_fraction: float = 0.01  # fewer tissue pixels than this fraction → flag NO_TISSUE
    min_std: float = 0.05  # Lab standard deviation (L: 0-100) below which a channel is flat → flag DEGENERATE

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field and its valid range."""
        params_io.check_fields(self, {
            "io": (1.0, math.inf),
            "beta": (0.0, math.inf),
            "min_tissue_fraction": (0.0, 1.0),
            "min_std": (0.0, math.inf),
        })


class ReinhardParams(NamedTuple):
    """Target colour statistics (a pytree): Lab means [3] and standard deviations [3]."""

    means: jax.Array
    stds: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the method's name."""
        return {"method": "reinhard", **params_io.to_lists(**self._asdict())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ReinhardParams":
        """Inverse of `to_dict`; raises naming the key that is missing or malformed."""
        params_io.check_method(data, "reinhard")
        return cls(
            params_io.finite_array(data, "means", (3,)),
            params_io.finite_array(data, "stds", (3,), positive=True),
        )


def _statistics(image: jax.Array, config: ReinhardConfig) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Planar Lab [3, N], its means [3] and population stds [3], and the flag of one image [H, W, 3]."""
    intensity = planar.pixels(image)
    lab = jax.lax.optimization_barrier(planar.rgb_to_lab(intensity / 255.0))
    means = jnp.mean(lab, axis=1)
    stds = jnp.sqrt(jnp.mean(jnp.square(lab - means[:, None]), axis=1))
    od = robust.optical_density(intensity, config.io)
    tissue = robust.masked_count(robust.tissue_mask(intensity, od, config.beta))
    no_tissue = tissue < max(1.0, config.min_tissue_fraction * intensity.shape[1])
    flat = jnp.any(stds < config.min_std) | ~jnp.all(jnp.isfinite(stds))
    return lab, means, stds, robust.combine_flags((no_tissue, robust.NO_TISSUE), (flat, robust.DEGENERATE))


def _transform_one(image: jax.Array, params: ReinhardParams, config: ReinhardConfig) -> tuple[jax.Array, jax.Array]:
    """Map one image's Lab statistics onto `params`; returns (image, flag)."""
    lab, means, stds, flag = _statistics(image, config)
    normalized = flag == robust.NORMALIZED
    scale = params.stds / jnp.where(normalized, stds, 1.0)
    rgb = planar.lab_to_rgb((lab - means[:, None]) * scale[:, None] + params.means[:, None]) * 255.0
    return planar.to_image(jnp.where(normalized, rgb, planar.pixels(image)), image), flag


@functools.partial(jax.jit, static_argnames=("config",))
def transform(
    batch: jax.Array, params: ReinhardParams, config: ReinhardConfig = ReinhardConfig()
) -> tuple[jax.Array, jax.Array]:
    """Normalize a batch [B, H, W, 3] (uint8, or float in [0, 1]) to the Lab statistics in `params`.

    Returns (images of the input dtype, int32 flags [B] from `robust`); flagged images come back unchanged.
    """
    robust.check_batch(batch, "reinhard.py")
    params = jax.tree.map(lambda leaf: jnp.asarray(leaf, jnp.float32), params)
    return robust.map_groups(jax.vmap(functools.partial(_transform_one, params=params, config=config)), batch)


@functools.partial(jax.jit, static_argnames=("config",))
def estimate_statistics(
    batch: jax.Array, config: ReinhardConfig = ReinhardConfig()
) -> tuple[ReinhardParams, jax.Array]:
    """Each image's own Lab statistics (means [B, 3], stds [B, 3]) and flags [B]."""
    robust.check_batch(batch, "reinhard.py")

    def one(image: jax.Array) -> tuple[ReinhardParams, jax.Array]:
        _, means, stds, flag = _statistics(image, config)
        return ReinhardParams(means, stds), flag

    return robust.map_groups(jax.vmap(one), batch)


def fit(target_images: jax.Array | np.ndarray, config: ReinhardConfig = ReinhardConfig()) -> ReinhardParams:
    """Target Lab statistics of one image [H, W, 3] or of the pooled pixels of several [B, H, W, 3].

    Raises ValueError when the target has no tissue or a flat colour channel.
    """
    found, flag = estimate_statistics(robust.pooled_pixels(target_images, "reinhard.py"), config)
    robust.check_fitted(flag, "reinhard.py", f"fewer than {config.min_tissue_fraction:.0%} tissue pixels, "
                        f"or a Lab channel with std < {config.min_std}")
    return ReinhardParams(found.means[0], found.stds[0])
