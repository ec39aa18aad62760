"""How far apart two sets of embeddings are: Gaussian Fréchet distance, sliced 2-Wasserstein on samples.

All functions are jitted float32 JAX. Distances between encoders are only comparable after
`standardize` (z-scoring with one reference set), which makes them invariant to the encoder's scale.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

# Per-dimension std floor, relative to the RMS std over all dimensions of the reference set: a
# dimension that is (nearly) dead on the reference is divided by at most 1000x less than a typical
# one, so it cannot blow up a distance, and the floor scales with the data (scale invariance holds).
STD_REL_FLOOR = 1e-3
# Absolute floor used only when the whole reference set is constant (RMS std below 1e-9).
STD_ABS_FLOOR = 1e-12


@jax.jit
def reference_stats(ref: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-dimension mean and floored population std (ddof=0) of `ref` (N, D), for z-scoring.

    std_d is raised to max(STD_REL_FLOOR * rms_d(std_d), STD_ABS_FLOOR) so dead dimensions stay finite.
    """
    ref = jnp.asarray(ref, jnp.float32)
    mean = jnp.mean(ref, axis=0)
    std = jnp.std(ref, axis=0)
    floor = jnp.maximum(STD_REL_FLOOR * jnp.sqrt(jnp.mean(std**2)), STD_ABS_FLOOR)
    return mean, jnp.maximum(std, floor)


@jax.jit
def standardize(x: jax.Array, ref: jax.Array) -> jax.Array:
    """Z-score `x` (M, D) with the REFERENCE set's per-dimension mean and floored std (see `reference_stats`).

    Scaling every embedding by c > 0 leaves the result unchanged, so an encoder cannot shrink its way
    to small distances. A collapsed encoder (constant + tiny noise) has its noise blown up to unit
    scale; its distances then look like those of a well-mixed encoder, which is why the linear-probe
    AUC is reported beside them: collapse shows up as AUC near 0.5.
    """
    mean, std = reference_stats(ref)
    return (jnp.asarray(x, jnp.float32) - mean) / std


@jax.jit
def gaussian_fit(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean (D,) and unbiased covariance (D, D) (ddof=1) of the rows of `x` (N, D), N >= 2."""
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=0)
    centred = x - mean
    cov = centred.T @ centred / (x.shape[0] - 1)
    return mean, cov


def _shrink(cov: jax.Array, shrinkage: jax.Array) -> jax.Array:
    """(1 - a) * cov + a * (tr(cov) / D) * I: keeps the trace, makes a rank-deficient cov (D > N) full rank."""
    d = cov.shape[0]
    return (1.0 - shrinkage) * cov + shrinkage * (jnp.trace(cov) / d) * jnp.eye(d, dtype=cov.dtype)


def _sqrtm_psd(a: jax.Array) -> jax.Array:
    """Symmetric square root of a symmetric PSD matrix; round-off negative eigenvalues are clipped to 0."""
    w, v = jnp.linalg.eigh(a)
    return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


@jax.jit
def frechet_from_stats(
    mu1: jax.Array, cov1: jax.Array, mu2: jax.Array, cov2: jax.Array, shrinkage: float = 0.0
) -> jax.Array:
    """Fréchet distance ‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) between two Gaussians (a SQUARED distance).

    This is exactly the squared 2-Wasserstein distance between N(μ1, Σ1) and N(μ2, Σ2). Tr((Σ1Σ2)^½) is
    computed as Σ sqrt(eig(√Σ1 Σ2 √Σ1)) (symmetric, eigh, tiny negative eigenvalues clipped); the
    result is clipped at 0 against round-off. `shrinkage` a in [0, 1] first replaces each Σ by
    (1 − a)Σ + a·(tr Σ / D)·I, which keeps traces and helps when D > N (rank-deficient covariances).
    """
    mu1, mu2 = jnp.asarray(mu1, jnp.float32), jnp.asarray(mu2, jnp.float32)
    cov1 = _shrink(jnp.asarray(cov1, jnp.float32), shrinkage)
    cov2 = _shrink(jnp.asarray(cov2, jnp.float32), shrinkage)
    s1 = _sqrtm_psd(0.5 * (cov1 + cov1.T))
    inner = s1 @ cov2 @ s1
    eig = jnp.linalg.eigvalsh(0.5 * (inner + inner.T))
    tr_covmean = jnp.sum(jnp.sqrt(jnp.clip(eig, 0.0)))
    fd = jnp.sum((mu1 - mu2) ** 2) + jnp.trace(cov1) + jnp.trace(cov2) - 2.0 * tr_covmean
    return jnp.maximum(fd, 0.0)


@jax.jit
def frechet_distance(x: jax.Array, y: jax.Array, shrinkage: float = 0.0) -> jax.Array:
    """Fréchet distance (squared W2 between Gaussian fits) of sample sets x (N, D) and y (M, D); see `frechet_from_stats`."""
    mu1, cov1 = gaussian_fit(x)
    mu2, cov2 = gaussian_fit(y)
    return frechet_from_stats(mu1, cov1, mu2, cov2, shrinkage)


def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common grid of two empirical quantile functions: interval widths and each interval's index into the sorted sets."""
    breaks = np.unique(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    widths = np.diff(breaks, prepend=0.0)
    mids = breaks - widths / 2
    ix = np.minimum(np.floor(mids * n), n - 1).astype(np.int32)
    iy = np.minimum(np.floor(mids * m), m - 1).astype(np.int32)
    return widths.astype(np.float32), ix, iy


@partial(jax.jit, static_argnames="num_projections")
def sliced_wasserstein(x: jax.Array, y: jax.Array, key: jax.Array, num_projections: int = 256) -> jax.Array:
    """Sliced 2-Wasserstein DISTANCE (not squared) between the empirical measures of x (N, D) and y (M, D).

    SW2 = sqrt(mean over random unit directions θ of W2²(θᵀx, θᵀy)), with each 1-D W2² computed exactly
    as ∫₀¹ (Qx(t) − Qy(t))² dt from the two empirical quantile functions on their common grid of
    breakpoints {i/N} ∪ {j/M}, so N ≠ M is handled exactly. Unlike the Fréchet distance it uses the
    samples themselves, not Gaussian fits. Directions are drawn from `key`; in 1-D it is the exact W2.
    """
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
    theta = jax.random.normal(key, (x.shape[1], num_projections), jnp.float32)
    theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)
    px = jnp.sort(x @ theta, axis=0)
    py = jnp.sort(y @ theta, axis=0)
    widths, ix, iy = _quantile_grid(x.shape[0], y.shape[0])
    w2_sq = jnp.sum(widths[:, None] * (px[ix] - py[iy]) ** 2, axis=0)
    return jnp.sqrt(jnp.mean(w2_sq))


@jax.jit
def matched_top1(query: jax.Array, query_ids: jax.Array, ref: jax.Array, ref_ids: jax.Array) -> jax.Array:
    """Fraction of query rows whose nearest ref row (cosine similarity) carries the same tile id.

    Measures whether the same tissue, rendered at another site, is still recognised among the source
    site's embeddings (plismbench-style retrieval). Callers pass only queries whose id occurs in ref.
    """
    q = query / jnp.maximum(jnp.linalg.norm(query, axis=1, keepdims=True), 1e-12)
    r = ref / jnp.maximum(jnp.linalg.norm(ref, axis=1, keepdims=True), 1e-12)
    nearest = jax.lax.map(lambda qi: jnp.argmax(r @ qi), q, batch_size=512)  # bounded memory for large sets
    return jnp.mean((ref_ids[nearest] == query_ids).astype(jnp.float32))
