"""How far apart two sets of embeddings are: Gaussian Fréchet distance, sliced 2-Wasserstein, same-tile retrieval.

The O(N) work (moments, projections, sorting, similarity search) is chunked float32 JAX/BLAS/numpy, so
10^5–10^6 × D sets fit in memory; the O(D³) matrix functions of the Fréchet distance run in float64
LAPACK on the host (faster and more accurate on CPU than float32 `jnp.linalg.eigh`). Distances
between encoders are only comparable after `standardize` (z-scoring with one reference set).
"""

from __future__ import annotations

from dataclasses import dataclass
import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg
from threadpoolctl import threadpool_limits

from lmc_jax.evaluate.kernels.padding import chunks

# Per-dimension std floor, relative to the RMS std over all dimensions of the reference set: a
# dimension that is (nearly) dead on the reference is divided by at most 1000x less than a typical
# one, so it cannot blow up a distance, and the floor scales with the data (scale invariance holds).
STD_REL_FLOOR = 1e-3
# Absolute floor used only when the whole reference set is constant (RMS std below 1e-9).
STD_ABS_FLOOR = 1e-12
# Cholesky jitter relative to the mean variance: makes a rank-deficient covariance factorable; it moves
# Tr((Σ1Σ2)^½) by at most ~sqrt(jitter) of the typical scale per null direction (1e-6 relative).
_CHOL_JITTER = 1e-12
_ROW_CHUNK = 8192  # rows per chunk for moments
_PROJECTION_CHUNK = 64  # sliced-W2 directions per chunk (N x 64 floats sorted at a time)
_QUERY_CHUNK = 512  # retrieval queries per step
_GRADIENT_JITTER = 1e-6  # relative jitter of Σ1 in the transport-map gradient (bounds its slope)
_EIG_FLOOR = 1e-12  # relative eigenvalue floor of M = Lᵀ Σ2 L in that gradient
_DEGENERATE = 1e-12  # a covariance whose trace is below this share of the other's counts as zero


def reference_stats(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and floored population std (ddof=0) of `ref` (N, D), float32, for z-scoring.

    std_d is raised to max(STD_REL_FLOOR * rms_d(std_d), STD_ABS_FLOOR) so dead dimensions stay finite.
    Two float64 passes over row chunks (no full-size temporary).
    """
    ref = np.asarray(ref)
    mean = sum(ref[s:s + _ROW_CHUNK].sum(axis=0, dtype=np.float64) for s in range(0, len(ref), _ROW_CHUNK)) / len(ref)
    var = sum(np.sum((ref[s:s + _ROW_CHUNK] - mean) ** 2, axis=0) for s in range(0, len(ref), _ROW_CHUNK)) / len(ref)
    std = np.sqrt(var)
    floor = max(STD_REL_FLOOR * np.sqrt(np.mean(std**2)), STD_ABS_FLOOR)
    return mean.astype(np.float32), np.maximum(std, floor).astype(np.float32)


def standardize(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Z-score `x` (M, D) with the REFERENCE set's per-dimension mean and floored std (see `reference_stats`).

    Scaling every embedding by c > 0 leaves the result unchanged, so an encoder cannot shrink its way
    to small distances. A collapsed encoder (constant + tiny noise) has its noise blown up to unit
    scale; its distances then look like those of a well-mixed encoder, which is why the linear-probe
    AUC is reported beside them: collapse shows up as AUC near 0.5.
    """
    mean, std = reference_stats(ref)
    return ((np.asarray(x, np.float32) - mean) / std).astype(np.float32)


def _one_blas_thread(f):
    """Run f with one BLAS thread. Host BLAS/LAPACK here works on D×D matrices or small row blocks: one
    thread is about as fast on an idle 2-core CPU and 3-10x faster on a busy one (measured: OpenBLAS's
    second thread spins against other processes)."""
    def wrapped(*args, **kwargs):
        with threadpool_limits(1, user_api="blas"):
            return f(*args, **kwargs)

    wrapped.__doc__, wrapped.__name__ = f.__doc__, f.__name__
    return wrapped


@dataclass(frozen=True)
class BlockMoments:
    """Sufficient statistics of a sample split into bootstrap blocks, rows centred on the sample mean first."""

    centre: np.ndarray  # (D,) float64 mean of all rows
    n: np.ndarray  # (B,) float64 rows per block
    sums: np.ndarray  # (B, D) float64 sums of centred rows
    outer: np.ndarray  # (B, D, D) float32 sums of centred outer products


@_one_blas_thread
def block_moments(x: np.ndarray, block_ids: np.ndarray, num_blocks: int,
                  centre: np.ndarray | None = None) -> BlockMoments:
    """Per-block counts, sums and outer-product sums of x (N, D) about `centre` (default: x's mean), float32 BLAS."""
    x = np.asarray(x, np.float32)
    ids = np.asarray(block_ids)
    if centre is None:
        centre = x.mean(axis=0, dtype=np.float64) if len(x) else np.zeros(x.shape[1])
    order = np.argsort(ids, kind="stable")
    bounds = np.searchsorted(ids[order], np.arange(num_blocks + 1))
    d = x.shape[1]
    n, sums = np.zeros(num_blocks), np.zeros((num_blocks, d))
    outer = np.zeros((num_blocks, d, d), np.float32)
    for b in range(num_blocks):
        rows = order[bounds[b]:bounds[b + 1]]
        for start in range(0, len(rows), _ROW_CHUNK):
            xb = x[rows[start:start + _ROW_CHUNK]] - centre.astype(np.float32)
            outer[b] += xb.T @ xb
            sums[b] += xb.sum(axis=0, dtype=np.float64)
        n[b] = len(rows)
    return BlockMoments(centre=centre, n=n, sums=sums, outer=outer)


def sum_moments(parts: list[BlockMoments]) -> BlockMoments:
    """Moments of the union of disjoint row sets taken about one shared centre (e.g. a site's labels)."""
    return BlockMoments(centre=parts[0].centre, n=sum(p.n for p in parts), sums=sum(p.sums for p in parts),
                        outer=sum(p.outer for p in parts))


def _draws(m: BlockMoments, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row count (K,) and mean (K, D) of each set resampled by block counts (K, B)."""
    n = np.asarray(counts, np.float64) @ m.n
    return n, m.centre + (counts @ m.sums) / np.maximum(n, 1.0)[:, None]


def _cov_inner(m: BlockMoments, counts: np.ndarray, g: np.ndarray) -> np.ndarray:
    """⟨G, Σ_k⟩ = tr(G Σ_k) for the unbiased covariance Σ_k of each resampled set, from block sums: O(B·D² + K·D²)."""
    counts = np.asarray(counts, np.float64)
    per_block = np.einsum("bij,ij->b", m.outer, g.astype(np.float32), dtype=np.float64)
    n = counts @ m.n
    delta = (counts @ m.sums) / np.maximum(n, 1.0)[:, None]
    return (counts @ per_block - n * np.einsum("ki,ij,kj->k", delta, g, delta)) / np.maximum(n - 1.0, 1.0)


def _point(m: BlockMoments) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance of all rows (every block once), float64."""
    n = float(m.n.sum())
    delta = m.sums.sum(axis=0) / max(n, 1.0)
    cov = (m.outer.sum(axis=0, dtype=np.float64) - n * np.outer(delta, delta)) / max(n - 1.0, 1.0)
    return m.centre + delta, 0.5 * (cov + cov.T)


def gaussian_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) (ddof=1) of the rows of x (N, D), N ≥ 2, in float64."""
    return _point(block_moments(x, np.zeros(len(x), np.int64), 1))


def _shrink(cov: np.ndarray, shrinkage: float) -> np.ndarray:
    """(1 - a) * cov + a * (tr(cov) / D) * I: keeps the trace, makes a rank-deficient cov (D > N) full rank."""
    d = cov.shape[-1]
    return (1.0 - shrinkage) * cov + shrinkage * (np.trace(cov) / d) * np.eye(d)


def _factor(cov: np.ndarray, jitter: float) -> np.ndarray:
    """Lower Cholesky factor of cov + jitter·(tr cov / D)·I (the jitter grows until it factors)."""
    scale = max(np.trace(cov) / len(cov), 1e-300)
    for j in (jitter, 1e3 * jitter, 1e6 * jitter, 1e-3):
        try:
            return linalg.cholesky(cov + j * scale * np.eye(len(cov)), lower=True, check_finite=False)
        except linalg.LinAlgError:
            continue
    raise FloatingPointError("covariance is not factorable even with 1e-3 relative jitter; embeddings degenerate")


@_one_blas_thread
def frechet_from_stats(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray,
                       shrinkage: float = 0.0) -> float:
    """Fréchet distance ‖μ1−μ2‖² + Tr(Σ1 + Σ2 − 2(Σ1Σ2)^½) between two Gaussians (a SQUARED distance), float64.

    This is exactly the squared 2-Wasserstein distance between N(μ1, Σ1) and N(μ2, Σ2). Tr((Σ1Σ2)^½) is
    Σ sqrt(eig(L1ᵀ Σ2 L1)) with Σ1 = L1 L1ᵀ (Cholesky, tiny relative jitter for rank-deficient Σ1); the
    result is clipped at 0 against round-off. `shrinkage` a in [0, 1] first replaces each Σ by
    (1 − a)Σ + a·(tr Σ / D)·I, which keeps traces and helps when D > N (rank-deficient covariances).
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1 = _shrink(np.asarray(cov1, np.float64), shrinkage)
    cov2 = _shrink(np.asarray(cov2, np.float64), shrinkage)
    cov1, cov2 = 0.5 * (cov1 + cov1.T), 0.5 * (cov2 + cov2.T)
    factor = _factor(cov1, _CHOL_JITTER)
    inner = factor.T @ cov2 @ factor
    eig = linalg.eigvalsh(0.5 * (inner + inner.T), check_finite=False)
    # tr Σ1 as ‖L1‖²_F keeps the jitter consistent with Tr((Σ1Σ2)^½): FD(x, x) is 0, not −2·D·jitter
    mean_term = np.sum((mu1 - mu2) ** 2)
    fd = mean_term + np.sum(factor**2) + np.trace(cov2) - 2.0 * np.sum(np.sqrt(np.clip(eig, 0, None)))
    round_off = 1e-12 * (mean_term + np.trace(cov1) + np.trace(cov2)) + 1e-300
    return float(fd) if fd > round_off else 0.0


def frechet_distance(x: np.ndarray, y: np.ndarray, shrinkage: float = 0.0) -> float:
    """Fréchet distance (squared W2 between Gaussian fits) of sample sets x (N, D) and y (M, D).

    See `frechet_from_stats`."""
    mu1, cov1 = gaussian_fit(x)
    mu2, cov2 = gaussian_fit(y)
    return frechet_from_stats(mu1, cov1, mu2, cov2, shrinkage)


def _bures_gradients(cov1: np.ndarray, cov2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """∂/∂Σ1 and ∂/∂Σ2 of tr Σ1 + tr Σ2 − 2 Tr((Σ1Σ2)^½): I − T and I − T⁻¹, T the optimal-transport map.

    With Σ1 = L Lᵀ and M = Lᵀ Σ2 L: T = L⁻ᵀ M^½ L⁻¹ and T⁻¹ = L M^-½ Lᵀ. Σ1 gets 1e-6 relative jitter
    and M's eigenvalues a 1e-12 relative floor, so rank-deficient covariances give large but finite slopes
    along directions in which resampling cannot move them anyway.
    """
    d = len(cov1)
    t1, t2 = np.trace(cov1), np.trace(cov2)
    if min(t1, t2) <= _DEGENERATE * max(t1, t2, 1e-300):
        return np.eye(d), np.eye(d)  # a (near-)zero covariance: Tr((Σ1Σ2)^½) ≈ 0 for every draw, exactly linear
    factor = _factor(cov1, _GRADIENT_JITTER)
    inner = factor.T @ cov2 @ factor
    w, v = linalg.eigh(0.5 * (inner + inner.T), check_finite=False)
    w = np.maximum(w, _EIG_FLOOR * max(w.max(), 1e-300))
    inv_factor = linalg.solve_triangular(factor, np.eye(d), lower=True, check_finite=False)
    transport = inv_factor.T @ ((v * np.sqrt(w)) @ v.T) @ inv_factor
    inverse = factor @ ((v / np.sqrt(w)) @ v.T) @ factor.T
    return np.eye(d) - 0.5 * (transport + transport.T), np.eye(d) - 0.5 * (inverse + inverse.T)


@_one_blas_thread
def frechet_replicates(source: BlockMoments, source_counts: np.ndarray,
                       targets: list[tuple[BlockMoments, np.ndarray]]) -> np.ndarray:
    """FD between block-resampled source and target sets, (len(targets), K); NaN where a draw has < 2 rows.

    Draw k resamples the source with source_counts[k] and target t with its counts[k]. The mean term
    ‖μ1−μ2‖² and both traces are exact for every draw; the Tr((Σ1Σ2)^½) term moves to first order
    around the full-sample covariances (delta method through the transport map T): no D×D
    eigendecomposition per draw, O(B·D²) per target. A draw of all blocks once gives the exact FD.
    Near FD ≈ 0 (Σ1 ≈ Σ2, T ≈ I) the first-order covariance term vanishes and draws vary through the
    mean term only.
    """
    mu1, cov1 = _point(source)
    n1, means1 = _draws(source, source_counts)
    out = np.full((len(targets), len(source_counts)), np.nan)
    for t, (moments, counts) in enumerate(targets):
        mu2, cov2 = _point(moments)
        n2, means2 = _draws(moments, counts)
        g1, g2 = _bures_gradients(cov1, cov2)
        change = (np.sum((means1 - means2) ** 2, axis=1) - np.sum((mu1 - mu2) ** 2)
                  + _cov_inner(source, source_counts, g1) - np.sum(g1 * cov1)
                  + _cov_inner(moments, counts, g2) - np.sum(g2 * cov2))
        fd = np.maximum(frechet_from_stats(mu1, cov1, mu2, cov2) + change, 0.0)
        out[t] = np.where((n1 >= 2) & (n2 >= 2), fd, np.nan)
    return out


def _w2_sq_chunk(x: np.ndarray, y: np.ndarray, theta: np.ndarray, widths: np.ndarray, ix: np.ndarray,
                 iy: np.ndarray) -> np.ndarray:
    """Exact 1-D W2² of x and y projected on each column of theta (D, P) → (P,)."""
    px = np.sort(x @ theta, axis=0)
    py = np.sort(y @ theta, axis=0)
    return np.einsum("g,gp->p", widths, (px[ix] - py[iy]) ** 2, dtype=np.float64)


def _quantile_grid(n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Common grid of two empirical quantile functions: interval widths and each interval's index into the sorted sets."""
    breaks = np.unique(np.concatenate([np.arange(1, n + 1) / n, np.arange(1, m + 1) / m]))
    widths = np.diff(breaks, prepend=0.0)
    mids = breaks - widths / 2
    ix = np.minimum(np.floor(mids * n), n - 1).astype(np.int32)
    iy = np.minimum(np.floor(mids * m), m - 1).astype(np.int32)
    return widths.astype(np.float32), ix, iy


@_one_blas_thread
def sliced_wasserstein(x: np.ndarray, y: np.ndarray, key: jax.Array, num_projections: int = 256) -> float:
    """Sliced 2-Wasserstein DISTANCE (not squared) between the empirical measures of x (N, D) and y (M, D).

    SW2 = sqrt(mean over random unit directions θ of W2²(θᵀx, θᵀy)), with each 1-D W2² computed exactly
    as ∫₀¹ (Qx(t) − Qy(t))² dt from the two empirical quantile functions on their common grid of
    breakpoints {i/N} ∪ {j/M}, so N ≠ M is handled exactly. Unlike the Fréchet distance it uses the
    samples themselves, not Gaussian fits. Directions are fixed by `key` (projected 64 at a time, so memory is
    N x 64 floats); in 1-D it is the exact W2. Sorting runs in numpy: XLA's CPU sort measured ~17x slower.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y, np.float32)
    theta = np.random.default_rng(np.asarray(jax.random.key_data(key))).normal(size=(x.shape[1], num_projections))
    theta = (theta / np.linalg.norm(theta, axis=0, keepdims=True)).astype(np.float32)
    widths, ix, iy = _quantile_grid(x.shape[0], y.shape[0])
    w2_sq = [_w2_sq_chunk(x, y, theta[:, s:s + _PROJECTION_CHUNK], widths, ix, iy)
             for s in range(0, num_projections, _PROJECTION_CHUNK)]
    return float(np.sqrt(np.mean(np.concatenate(w2_sq))))


@jax.jit
def _nearest_chunk(q: jax.Array, r: jax.Array) -> jax.Array:
    """Index of the most cosine-similar row of r (unit rows) for each row of q (unit rows)."""
    return jnp.argmax(q @ r.T, axis=1)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def same_id_hits(query: np.ndarray, query_ids: np.ndarray, ref: np.ndarray, ref_ids: np.ndarray) -> np.ndarray:
    """Per query row: whether its nearest ref row (cosine similarity) carries the same tile id (bool (M,)).

    Measures whether the same tissue, rendered at another site, is still recognised among the source
    site's embeddings (plismbench-style retrieval); the mean is the top-1 rate. Callers pass only
    queries whose id occurs in ref. Memory is 512 x len(ref) similarities at a time.
    """
    q, r = _unit_rows(query), jnp.asarray(_unit_rows(ref))
    nearest = [np.asarray(_nearest_chunk(chunk, r))[:n_q] for chunk, n_q in chunks(q, _QUERY_CHUNK)]
    nearest = np.concatenate(nearest) if nearest else np.zeros(0, np.int64)
    return np.asarray(ref_ids)[nearest] == np.asarray(query_ids)
