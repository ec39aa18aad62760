"""Vahadane et al. (2016) structure-preserving stain normalization in JAX: no SPAMS, batched, jitted.

Per image: the stain matrix is a 2-atom non-negative sparse dictionary of the tissue pixels'
optical density, min ½‖X − C·D‖² + λ‖C‖₁ over C ≥ 0, D ≥ 0 with ‖dⱼ‖ ≤ 1 (SPAMS `trainDL`
mode 2, posAlpha, posD, as StainTools calls it), learnt by alternating an exact per-pixel
non-negative lasso with projected block-coordinate dictionary updates on a fixed-size random
sample of pixels. Concentrations of every pixel are the non-negative lasso with the smaller λ,
scaled by 99th percentiles to the target's and recombined with the target's stains (StainTools'
normalizer). Fixed shapes throughout; no tissue or a degenerate dictionary → image unchanged, flagged.
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

_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class VahadaneConfig:
    """Hyper-parameters (StainTools' λs); hashable, so it is a static argument under jit."""

    io: float = 255.0  # background intensity (0-255): OD = -log(max(I, 1) / io), as StainTools
    beta: float = 0.15  # a tissue pixel has OD ≥ beta in every channel (Macenko's threshold)
    regularizer: float = 0.1  # λ of the dictionary learning (StainTools' `regularizer`)
    concentration_regularizer: float = 0.01  # λ of the per-pixel concentrations (StainTools' `get_concentrations`)
    iterations: int = 30  # alternations of sparse coding and dictionary update
    num_samples: int = 8192  # tissue pixels drawn (with replacement) per image for the dictionary learning
    seed: int = 0  # draws the pixel sample; the same seed gives the same result for the same image
    max_percentile: float = 99.0  # percentile of each stain's concentration used as its maximum
    min_tissue_fraction: float = 0.01  # fewer tissue pixels than this fraction → flag NO_TISSUE
    min_stain_angle: float = 0.02  # radians between the two atoms below which → flag DEGENERATE

    def __post_init__(self) -> None:
        """Refuse values that cannot work, naming the field and its valid range."""
        for name, low in (("iterations", 1), ("num_samples", 2), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"VahadaneConfig.{name}={value!r}: choose an integer ≥ {low}.")
        params_io.check_fields(self, {
            "io": (1.0, math.inf),
            "beta": (0.0, math.inf),
            "regularizer": (0.0, math.inf),
            "concentration_regularizer": (0.0, math.inf),
            "max_percentile": (50.0, 100.0),
            "min_tissue_fraction": (0.0, 1.0),
            "min_stain_angle": (0.0, math.pi / 2),
        })


class VahadaneParams(NamedTuple):
    """Target stains (a pytree): unit OD vectors [2, 3] (rows H, E) and maximum concentrations [2]."""

    stain_matrix: jax.Array
    max_concentrations: jax.Array

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form, with the method's name."""
        return {"method": "vahadane", **params_io.to_lists(**self._asdict())}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "VahadaneParams":
        """Inverse of `to_dict`; raises naming the key that is missing or malformed."""
        params_io.check_method(data, "vahadane")
        return cls(
            params_io.finite_array(data, "stain_matrix", (2, 3)),
            params_io.finite_array(data, "max_concentrations", (2,), positive=True),
        )


def nonnegative_lasso(od: jax.Array, stains: jax.Array, regularizer: float) -> jax.Array:
    """argmin over C ≥ 0 of ½‖x − Cᵀ·stains‖² + λ·ΣC per pixel: planar OD [3, N], stains [2, 3] → C [2, N].

    Exact for two atoms: the minimiser on each face of the orthant (both active, one, none) checked
    against the KKT conditions; what SPAMS' `lasso(mode=2, pos=True)` returns, without iterations.
    """
    gram = stains @ stains.T
    corr = planar.apply_matrix(od, stains.T) - regularizer  # b - λ, [2, N]
    det = gram[0, 0] * gram[1, 1] - gram[0, 1] * gram[1, 0]
    invertible = det > _TINY * jnp.maximum(gram[0, 0] * gram[1, 1], _TINY)
    safe_det = jnp.where(invertible, det, 1.0)
    both = jnp.stack([gram[1, 1] * corr[0] - gram[0, 1] * corr[1], gram[0, 0] * corr[1] - gram[1, 0] * corr[0]])
    both = both / safe_det
    first = jnp.maximum(corr[0] / jnp.maximum(gram[0, 0], _TINY), 0.0)
    second = jnp.maximum(corr[1] / jnp.maximum(gram[1, 1], _TINY), 0.0)
    use_both = invertible & (both[0] > 0) & (both[1] > 0)
    use_first = gram[1, 0] * first - corr[1] >= 0  # KKT: the gradient along atom 2 is ≥ 0 at (first, 0)
    use_second = gram[0, 1] * second - corr[0] >= 0
    zero = jnp.zeros_like(first)
    c0 = jnp.where(use_both, both[0], jnp.where(use_first, first, zero))
    c1 = jnp.where(use_both, both[1], jnp.where(use_first, zero, jnp.where(use_second, second, zero)))
    return jnp.stack([c0, c1])


def _update_dictionary(samples: jax.Array, weights: jax.Array, conc: jax.Array, stains: jax.Array) -> jax.Array:
    """One projected block-coordinate pass over the atoms (Mairal et al. 2010, SPAMS' update, D ≥ 0, ‖d‖ ≤ 1)."""
    weighted = conc * weights
    gram = weighted @ conc.T  # [2, 2]
    cross = jnp.tensordot(weighted, samples, axes=(1, 1), precision=jax.lax.Precision.HIGHEST)  # [2, 3]
    for atom in range(2):
        used = gram[atom, atom] > _TINY
        step = (cross[atom] - gram[atom] @ stains) / jnp.where(used, gram[atom, atom], 1.0)
        atom_new = jnp.maximum(stains[atom] + step, 0.0)
        atom_new = atom_new / jnp.maximum(jnp.linalg.norm(atom_new), 1.0)
        stains = stains.at[atom].set(jnp.where(used, atom_new, stains[atom]))
    return stains


def _sample_tissue(od: jax.Array, tissue: jax.Array, config: VahadaneConfig) -> tuple[jax.Array, jax.Array]:
    """`num_samples` tissue pixels [3, S] drawn uniformly with replacement, and their weights (0 if none)."""
    cumulative = jnp.cumsum(tissue.astype(jnp.int32))
    count = cumulative[-1]
    draws = jax.random.uniform(jax.random.key(config.seed), (config.num_samples,))
    ranks = jnp.minimum(jnp.floor(draws * count).astype(jnp.int32), jnp.maximum(count - 1, 0)) + 1
    index = jnp.minimum(jnp.searchsorted(cumulative, ranks, side="left"), od.shape[1] - 1)
    weights = jnp.where(count > 0, tissue[index], False).astype(od.dtype)
    return od[:, index], weights


def _dictionary(intensity: jax.Array, config: VahadaneConfig) -> tuple[jax.Array, ...]:
    """One image's tissue count, unit stain dictionary [2, 3] (H first) and concentrations [2, N] of all pixels."""
    od = jnp.maximum(-jnp.log(jnp.maximum(intensity, 1.0) / config.io), 1e-6)
    od = jax.lax.optimization_barrier(od)
    tissue = robust.tissue_mask(intensity, od, config.beta)
    samples, weights = _sample_tissue(od, tissue, config)

    def alternate(_, stains):
        conc = nonnegative_lasso(samples, stains, config.regularizer)
        return _update_dictionary(samples, weights, conc, stains)

    start = jnp.asarray(color.DEFAULT_STAIN_MATRIX, jnp.float32)
    stains = jax.lax.fori_loop(0, config.iterations, alternate, start)
    stains = stains / jnp.maximum(jnp.linalg.norm(stains, axis=1, keepdims=True), _TINY)
    stains = jnp.where(stains[0, 0] < stains[1, 0], stains[::-1], stains)  # haematoxylin (more red OD) first
    return robust.masked_count(tissue), stains, nonnegative_lasso(od, stains, config.concentration_regularizer)


def _estimate(intensity: jax.Array, config: VahadaneConfig) -> stain_matrix.Estimate:
    """Stain dictionaries, concentrations and maxima of a group of planar images [G, 3, N] (0-255).

    Per-image dictionary learning is vmapped; the percentiles run on the group's rows together.
    """
    count, stains, conc = jax.vmap(_dictionary, in_axes=(0, None))(intensity, config)
    no_tissue = count < max(2.0, config.min_tissue_fraction * intensity.shape[-1])
    cosine = jnp.clip(jnp.sum(stains[:, 0] * stains[:, 1], axis=-1), -1.0, 1.0)
    return stain_matrix.flagged_estimate(stains, conc, no_tissue, jnp.arccos(cosine), config)


@functools.partial(jax.jit, static_argnames=("config",))
def transform(
    batch: jax.Array, params: VahadaneParams, config: VahadaneConfig = VahadaneConfig()
) -> tuple[jax.Array, jax.Array]:
    """Normalize a batch [B, H, W, 3] (uint8, or float in [0, 1]) to the target stains in `params`.

    Returns (images of the input dtype, int32 flags [B] from `robust`); flagged images come back unchanged.
    """
    return stain_matrix.transform(batch, params, config, _estimate, "vahadane.py")


@functools.partial(jax.jit, static_argnames=("config",))
def estimate_stains(batch: jax.Array, config: VahadaneConfig = VahadaneConfig()) -> tuple[VahadaneParams, jax.Array]:
    """Each image's own Vahadane params (stain matrix [B, 2, 3], maxima [B, 2]) and flags [B]."""
    return stain_matrix.estimate_stains(batch, config, _estimate, VahadaneParams, "vahadane.py")


def fit(target_images: jax.Array | np.ndarray, config: VahadaneConfig = VahadaneConfig()) -> VahadaneParams:
    """Target params from one image [H, W, 3] or the pooled pixels of several [B, H, W, 3].

    Raises ValueError when the target has no usable tissue (the transform would have nothing to match).
    """
    cause = f"fewer than {config.min_tissue_fraction:.0%} stained pixels, or a single stain"
    return stain_matrix.fit(target_images, config, estimate_stains, VahadaneParams, "vahadane.py", cause)
