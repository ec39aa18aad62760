"""Batch-mixing metrics of single-cell integration, as scib-metrics defines them: silhouette-batch, iLISI, kBET.

Per-cell scores come from chunked JAX computations: exact k-nearest neighbours and silhouette distances up to
EXACT_MAX_ROWS / SILHOUETTE_EXACT_MAX_ROWS cells; above them the kNN graph of the leading principal components
(as scanpy/scib build it) from an inverted-file index whose recall is measured against exact neighbours
(`knn_graph`), and silhouettes against a per-batch reference sample. Nothing
holds an N x N matrix. Aggregation into scib's summary numbers is separate so a bootstrap can reweight cells.
Definitions follow scib-metrics 0.5 (`silhouette_batch`, `ilisi_knn`, `kbet`): neighbours include
the cell itself, distances are Euclidean (not squared), perplexity = floor(k / 3), kBET's expected
batch frequencies are the global ones and its p-value is the χ² survival function with B − 1 dof.
"""

from __future__ import annotations

import warnings
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from lmc_jax.evaluate.kernels.padding import bucket, chunks, pad_rows

_CHUNK = 512  # query rows per step (memory: 512 x N distances, 512 x k x D differences)
_REF_BLOCK = 65_536  # exact kNN above this many rows: reference rows per step (memory: 512 x 65,536 distances)
EXACT_MAX_ROWS = 60_000  # knn_graph: exact kNN up to this many rows (O(N²·D)), the IVF index above
IVF_ROWS_PER_LIST = 384  # knn_graph's IVF cells: N / 384 of them
IVF_PROBES = 24  # lists searched per query list: each query meets ~24·384 candidates in knn_graph
GRAPH_COMPONENTS = 50  # above EXACT_MAX_ROWS the kNN graph lives on this many principal components (scanpy: 50)
RECALL_QUERIES = 500  # rows whose exact neighbours measure the IVF graph's recall
SILHOUETTE_EXACT_MAX_ROWS = 60_000  # a label group above this size: distances to a per-batch reference sample
SILHOUETTE_REFERENCE = 512  # reference rows per batch for such a group
_KMEANS_ROWS_PER_LIST = 32  # k-means of the IVF index is fit on this many rows per list
_KMEANS_ITERATIONS = 10
_IVF_QUERIES = 256  # query rows of one cell per step
_MEDIAN_CELLS = 1 << 24  # weighted medians: replicate rows x cells handled at a time
_LISI_TRIES = 50  # binary-search steps for the perplexity calibration (scib: 50)
_LISI_TOL = 1e-5


@partial(jax.jit, static_argnames="k")
def _knn_chunk(q: jax.Array, x: jax.Array, sq_x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """k nearest rows of x for each row of q: chosen on Gram-trick distances, then measured directly
    (‖q − x_j‖ without cancellation), returned nearest first."""
    d2 = jnp.maximum(jnp.sum(q * q, 1)[:, None] + sq_x[None, :] - 2.0 * q @ x.T, 0.0)
    _, idx = jax.lax.top_k(-d2, k)
    exact = jnp.sqrt(jnp.sum((q[:, None, :] - x[idx]) ** 2, axis=-1))
    order = jnp.argsort(exact, axis=1, stable=True)
    return jnp.take_along_axis(exact, order, axis=1), jnp.take_along_axis(idx, order, axis=1)


@jax.jit
def _gram_d2(q: jax.Array, x: jax.Array, sq_x: jax.Array) -> jax.Array:
    """Gram-trick squared distances (q rows x x rows); padding rows of x carry squared norm +inf."""
    return jnp.sum(q * q, 1)[:, None] + sq_x[None, :] - 2.0 * q @ x.T


@partial(jax.jit, static_argnames="k")
def _gram_top_k(q: jax.Array, x: jax.Array, sq_x: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
    """The k smallest Gram-trick squared distances from each row of q to the rows of x, and their positions
    (ties: the lower position first). Padding rows of x carry squared norm +inf."""
    d2 = jnp.maximum(_gram_d2(q, x, sq_x), 0.0)
    neg, idx = jax.lax.top_k(-d2, k)
    return -neg, idx


def _measured(q: np.ndarray, x: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`_knn_chunk`'s last step on the host (XLA:CPU gathers are slow): ‖q − x_j‖ measured directly for the
    chosen rows, then (distances, indices) stably sorted nearest first."""
    exact = np.sqrt(np.sum((x[idx] - q[:, None, :]) ** 2, axis=-1, dtype=np.float32))
    order = np.argsort(exact, axis=1, kind="stable")
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _reference_blocks(x: np.ndarray, sq: np.ndarray) -> list[tuple[jax.Array, jax.Array, int, int]]:
    """x in blocks of _REF_BLOCK rows on the device (the last padded, its padding at squared norm +inf):
    (block, squared norms, first row, real rows)."""
    out = []
    for start in range(0, len(x), _REF_BLOCK):
        rows = min(_REF_BLOCK, len(x) - start)
        sq_block = np.full(_REF_BLOCK, np.inf, np.float32)
        sq_block[:rows] = sq[start:start + rows]
        out.append((jnp.asarray(pad_rows(x[start:start + rows], _REF_BLOCK)), jnp.asarray(sq_block), start, rows))
    return out


def _blocked_top_k(q: np.ndarray, blocks: list[tuple[jax.Array, jax.Array, int, int]], k: int) -> np.ndarray:
    """Row indices of the k smallest Gram-trick distances over the reference blocks: each block's top k merged
    with the running one (running first, so equal distances keep the lower index)."""
    best_d2, best_idx = None, None
    for block, sq_block, start, rows in blocks:
        d2, idx = (np.asarray(a) for a in _gram_top_k(q, block, sq_block, min(k, rows)))
        idx = idx + start
        if best_d2 is not None:
            d2, idx = np.concatenate([best_d2, d2], axis=1), np.concatenate([best_idx, idx], axis=1)
            keep = np.argsort(d2, axis=1, kind="stable")[:, :k]
            d2, idx = np.take_along_axis(d2, keep, axis=1), np.take_along_axis(idx, keep, axis=1)
        best_d2, best_idx = d2, idx
    return best_idx


def knn(x: np.ndarray, k: int, *, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of x (N, D) among all rows, the row itself included.

    Returns (indices int32 (N, k), Euclidean distances float32 (N, k)), nearest first (rows at equal distance
    in the order of their Gram-trick distances, the lower index first when those are equal too). `rows` (optional) queries only those rows of x (results (len(rows), k)). Rows are centred first
    (smaller Gram-trick round-off). Memory: 512 query rows x min(N, 65,536) distances at a time; time O(N²·D)
    (see `knn_graph` for an index above EXACT_MAX_ROWS).
    """
    x = np.asarray(x, np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"knn: need 1 ≤ k ≤ N; got k={k}, N={len(x)}.")
    x = x - x.mean(axis=0)
    queries = x if rows is None else x[np.asarray(rows)]
    sq = np.sum(x * x, axis=1)
    small = len(x) <= _REF_BLOCK
    if small:
        xj, sqj = jnp.asarray(x), jnp.asarray(sq)
    else:
        blocks = _reference_blocks(x, sq)
    idx, dist = [], []
    for q, n_q in chunks(queries, _CHUNK):
        if small:
            d, i = (np.asarray(a)[:n_q] for a in _knn_chunk(q, xj, sqj, k))
        else:
            d, i = _measured(q[:n_q], x, _blocked_top_k(q, blocks, k)[:n_q])
        dist.append(d)
        idx.append(i)
    return np.concatenate(idx).astype(np.int32), np.concatenate(dist)


@jax.jit
def _nearest_centroid(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid (Euclidean) of each row of x."""
    return jnp.argmin(jnp.sum(centroids * centroids, 1)[None, :] - 2.0 * x @ centroids.T, axis=1).astype(jnp.int32)


@jax.jit
def _lloyd_step(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """One k-means (Lloyd) step on the rows of x; a centroid left without rows stays where it was."""
    assign = _nearest_centroid(x, centroids)
    sums = jax.ops.segment_sum(x, assign, num_segments=centroids.shape[0])
    counts = jax.ops.segment_sum(jnp.ones(x.shape[0], x.dtype), assign, num_segments=centroids.shape[0])
    return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], centroids)


def _candidate_bucket(n: int) -> int:
    """n rounded up to 1024·2^(i/4) (steps of ≤ 19%, multiples of 256): few compiles for cells of any size."""
    steps = max(0, int(np.ceil(4 * np.log2(max(n, 1) / 1024))))
    return max(1024, -(-int(np.ceil(1024 * 2 ** (steps / 4))) // 256) * 256)


def pca_projection(x: np.ndarray, components: int) -> np.ndarray:
    """x (N, D), already centred, projected on its `components` leading principal axes (float64 covariance
    accumulated over row blocks) → (N, components) float32; D ≤ components returns x itself."""
    if x.shape[1] <= components:
        return x
    cov = np.zeros((x.shape[1], x.shape[1]))
    for start in range(0, len(x), 65_536):
        block = x[start:start + 65_536]
        cov += (block.T @ block).astype(np.float64)
    _, vectors = np.linalg.eigh(cov)
    axes = vectors[:, ::-1][:, :components].astype(np.float32)
    return np.concatenate([x[start:start + 65_536] @ axes for start in range(0, len(x), 65_536)])


def ivf_index(x: np.ndarray, lists: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An inverted-file index of x (N, D): k-means centroids (lists, D) fit on a random subsample
    (_KMEANS_ROWS_PER_LIST rows per list, _KMEANS_ITERATIONS Lloyd steps) and each row's list (N,) int32."""
    x = np.asarray(x, np.float32)
    rng = np.random.default_rng(seed)
    sample = jnp.asarray(x[np.sort(rng.choice(len(x), min(len(x), lists * _KMEANS_ROWS_PER_LIST), replace=False))])
    centroids = sample[np.sort(rng.choice(sample.shape[0], lists, replace=False))]
    for _ in range(_KMEANS_ITERATIONS):
        centroids = _lloyd_step(sample, centroids)
    assign = np.concatenate([np.asarray(_nearest_centroid(q, centroids))[:n_q] for q, n_q in chunks(x, 8192)])
    return np.asarray(centroids), assign


def ivf_knn(x: np.ndarray, k: int, *, lists: int | None = None, probes: int = IVF_PROBES,
            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate k nearest neighbours of every row of x (N, D), the row itself included: an inverted-file index.

    Rows are grouped into `lists` k-means cells (default ≈ √N); the rows of each cell are compared with every row
    of the `probes` cells whose centroids lie nearest to their own cell's centroid (that cell included): one
    dense Gram-trick matrix product per block of _IVF_QUERIES query rows (padded: one compile per candidate
    bucket), the k smallest picked by partial sort. Distances are the Gram-trick ones, √max(‖q‖² + ‖x‖² − 2q·x, 0)
    on centred rows (float32 round-off ~1e-7·‖x‖² in the squared distance; `knn` measures them directly), a row's
    own distance exactly 0. A true neighbour is missed when it lies in a cell that is not probed: measure with
    `knn_recall`. With probes = lists this is the exact kNN. Same return layout
    as `knn`. Memory: one cell's candidates; time O(N · probes · N/lists · D).
    """
    x = np.asarray(x, np.float32)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"ivf_knn: need 1 ≤ k ≤ N; got k={k}, N={n}.")
    lists = max(1, min(n, int(round(np.sqrt(n))) if lists is None else lists))
    probes = max(1, min(probes, lists))
    x = x - x.mean(axis=0)
    centroids, assign = ivf_index(x, lists, seed)
    order = np.argsort(assign, kind="stable")  # each cell's rows in row order
    bounds = np.searchsorted(assign[order], np.arange(lists + 1))
    near, _ = knn(centroids, probes)  # the probed cells of each cell, itself first
    sq = np.sum(x * x, axis=1)
    idx, dist = np.zeros((n, k), np.int32), np.zeros((n, k), np.float32)
    for c in range(lists):
        members = order[bounds[c]:bounds[c + 1]]
        if not len(members):
            continue
        cand = np.sort(np.concatenate([order[bounds[p]:bounds[p + 1]] for p in near[c]]))
        if len(cand) < k:  # tiny cells far from the rest: widen to the whole set
            cand = np.arange(n)
        size = _candidate_bucket(len(cand))
        sq_cand = np.full(size, np.inf, np.float32)
        sq_cand[:len(cand)] = sq[cand]
        cand_x, sq_cand = jnp.asarray(pad_rows(x[cand], size)), jnp.asarray(sq_cand)
        for start in range(0, len(members), _IVF_QUERIES):
            rows = members[start:start + _IVF_QUERIES]
            d2 = np.asarray(_gram_d2(pad_rows(x[rows], _IVF_QUERIES), cand_x, sq_cand))[:len(rows)]
            picked = np.argpartition(d2, k - 1, axis=1)[:, :k]
            chosen = cand[picked]
            d2 = np.where(chosen == rows[:, None], 0.0, np.take_along_axis(d2, picked, axis=1))
            nearest = np.argsort(d2, axis=1, kind="stable")
            dist[rows] = np.sqrt(np.maximum(np.take_along_axis(d2, nearest, axis=1), 0.0))
            idx[rows] = np.take_along_axis(chosen, nearest, axis=1)
    return idx, dist


def knn_recall(x: np.ndarray, indices: np.ndarray, queries: int = RECALL_QUERIES, seed: int = 0) -> float:
    """Recall@k of a kNN graph (N, k) against the exact neighbours of `queries` random rows: mean share of each
    row's exact k neighbours that the graph holds."""
    rows = np.sort(np.random.default_rng(seed).choice(len(x), min(queries, len(x)), replace=False))
    exact, _ = knn(x, indices.shape[1], rows=rows)
    return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(exact, indices[rows])]) / indices.shape[1])


def knn_graph(x: np.ndarray, k: int, *, exact_max_rows: int = EXACT_MAX_ROWS,
              probes: int = IVF_PROBES) -> tuple[np.ndarray, np.ndarray, dict]:
    """The kNN graph the mixing metrics use, with its record for metrics.json: (indices, distances, info).

    Up to `exact_max_rows` rows: exact `knn` in all dimensions. Above: the graph of the GRAPH_COMPONENTS leading
    principal components (what scanpy's `pp.neighbors` builds on X_pca, the graph scib's benchmarks score),
    searched by `ivf_knn` with N / IVF_ROWS_PER_LIST cells and `probes` cells per row (~probes·IVF_ROWS_PER_LIST
    candidates a row, whatever N); its recall@k is measured on RECALL_QUERIES rows against exact neighbours in
    that projection ("recall_at_k") and against exact neighbours in all dimensions, the definition below
    `exact_max_rows` ("recall_at_k_full_dims": how much the projection itself changes the graph).
    """
    if len(x) <= exact_max_rows:
        idx, dist = knn(x, k)
        return idx, dist, {"method": "exact"}
    x = np.asarray(x, np.float32)
    x = x - x.mean(axis=0)
    y = pca_projection(x, GRAPH_COMPONENTS)
    lists = max(1, round(len(x) / IVF_ROWS_PER_LIST))
    idx, dist = ivf_knn(y, k, lists=lists, probes=probes)
    return idx, dist, {"method": "ivf", "components": min(GRAPH_COMPONENTS, x.shape[1]), "lists": lists,
                       "probes": min(probes, lists), "recall_at_k": knn_recall(y, idx),
                       "recall_at_k_full_dims": knn_recall(x, idx), "recall_queries": min(RECALL_QUERIES, len(x))}


def _entropy_and_p(dists: jax.Array, mask: jax.Array, beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Shannon entropy H and neighbour probabilities P ∝ exp(−β d) over unmasked neighbours (scib `_Hbeta`)."""
    p = jnp.where(mask, jnp.exp(-dists * beta), 0.0)
    total = jnp.sum(p)
    h = jnp.where(total == 0, 0.0, jnp.log(total) + beta * jnp.sum(dists * p) / total)
    return h, jnp.where(total == 0, jnp.zeros_like(p), p / total)


def _simpson_cell(dists: jax.Array, labels: jax.Array, mask: jax.Array, n_labels: int,
                  perplexity: jax.Array) -> jax.Array:
    """Simpson index Σ_b (Σ_{j: label b} P_j)² of one cell after calibrating β to the perplexity; −1 if H = 0."""
    target = jnp.log(perplexity)

    def step(state):
        beta, lo, hi, h, p, tries = state
        up = h - target > 0
        lo, hi = jnp.where(up, beta, lo), jnp.where(up, hi, beta)
        beta = jnp.where(up, jnp.where(hi == jnp.inf, beta * 2, (beta + hi) / 2),
                         jnp.where(lo == -jnp.inf, beta / 2, (beta + lo) / 2))
        h, p = _entropy_and_p(dists, mask, beta)
        return beta, lo, hi, h, p, tries + 1

    def searching(state):
        return (jnp.abs(state[3] - target) >= _LISI_TOL) & (state[5] < _LISI_TRIES)

    beta = jnp.float32(1.0)
    h, p = _entropy_and_p(dists, mask, beta)
    state = (beta, jnp.float32(-jnp.inf), jnp.float32(jnp.inf), h, p, 0)
    _, _, _, h, p, _ = jax.lax.while_loop(searching, step, state)
    per_label = jnp.zeros((n_labels,), p.dtype).at[labels].add(p)
    return jnp.where(h == 0, -1.0, jnp.dot(per_label, per_label))


@partial(jax.jit, static_argnames="n_labels")
def _simpson(dists: jax.Array, labels: jax.Array, mask: jax.Array, n_labels: int, perplexity: jax.Array) -> jax.Array:
    return jax.vmap(_simpson_cell, in_axes=(0, 0, 0, None, None))(dists, labels, mask, n_labels, perplexity)


def lisi(indices: np.ndarray, distances: np.ndarray, labels: np.ndarray, perplexity: float | None = None) -> np.ndarray:
    """Per-cell local inverse Simpson index of `labels` over each cell's neighbours (self excluded) (scib `lisi_knn`).

    `labels` are integer codes 0..L−1; perplexity defaults to floor(k / 3). A cell whose neighbour
    weights all vanish gets −1 as in scib (it cannot happen with finite distances).
    """
    indices, labels = np.asarray(indices), np.asarray(labels)
    n_labels = int(labels.max()) + 1
    perplexity = float(np.floor(indices.shape[1] / 3)) if perplexity is None else float(perplexity)
    mask = indices != np.arange(len(indices))[:, None]
    simpson = _simpson(jnp.asarray(distances, jnp.float32), jnp.asarray(labels[indices]), jnp.asarray(mask),
                       n_labels, jnp.float32(perplexity))
    return 1.0 / np.asarray(simpson, np.float64)


def ilisi_score(lisi_values: np.ndarray, n_batches: int, weights: np.ndarray | None = None) -> np.ndarray:
    """scib's scaled iLISI (median LISI − 1) / (B − 1), for each row of cell weights (R, N) → (R,) (None: unweighted)."""
    weights = np.ones((1, len(lisi_values))) if weights is None else np.asarray(weights, np.float64)
    return (_weighted_median(lisi_values, weights) - 1.0) / (n_batches - 1)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Median of `values` under each row of integer-valued weights (R, N); NaN for an all-zero row.

    With unit weights it equals np.median (mean of the two middle values for an even count).
    """
    order = np.argsort(values, kind="stable")
    v = values[order]
    step = max(1, _MEDIAN_CELLS // max(len(values), 1))  # rows of weights at a time (memory: ~4 copies of them)
    out = []
    for start in range(0, len(weights), step):
        cum = np.cumsum(weights[start:start + step, order], axis=1)
        total = cum[:, -1:]
        lower = np.argmax(cum >= total / 2, axis=1)  # first value whose cumulative weight reaches half
        upper = np.argmax(cum > total / 2, axis=1)
        even = np.isclose(cum[np.arange(len(cum)), lower], total[:, 0] / 2)
        median = np.where(even, 0.5 * (v[lower] + v[upper]), v[lower])
        out.append(np.where(total[:, 0] > 0, median, np.nan))
    return np.concatenate(out)


def kbet_cells(indices: np.ndarray, batches: np.ndarray, alpha: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell kBET χ² test of neighbour batch counts (self included) against the global batch frequencies.

    Returns (accepted bool (N,), p-values (N,)); the acceptance rate is the mean of `accepted`.
    """
    batches = np.asarray(batches)
    n_batches = int(batches.max()) + 1
    expected = np.bincount(batches, minlength=n_batches) / len(batches) * indices.shape[1]
    neighbour = batches[np.asarray(indices)]
    observed = np.stack([np.sum(neighbour == b, axis=1) for b in range(n_batches)], axis=1)
    statistic = np.sum((observed - expected) ** 2 / expected, axis=1)
    p_values = stats.chi2.sf(statistic, n_batches - 1)
    return p_values >= alpha, p_values


@jax.jit
def _silhouette_chunk(q: jax.Array, q_batch: jax.Array, x: jax.Array, sq_x: jax.Array, onehot: jax.Array,
                      sizes: jax.Array) -> jax.Array:
    """Silhouette of query rows against the batch clusters of x (one label group); 0 for singleton batches."""
    d = jnp.sqrt(jnp.maximum(jnp.sum(q * q, 1)[:, None] + sq_x[None, :] - 2.0 * q @ x.T, 0.0))
    per_batch = d @ onehot  # (chunk, B) summed distances to each batch
    own = jax.nn.one_hot(q_batch, sizes.shape[0], dtype=bool)
    a = jnp.sum(jnp.where(own, per_batch, 0.0), 1) / (sizes[q_batch] - 1)
    b = jnp.min(jnp.where(own | (sizes == 0)[None, :], jnp.inf, per_batch / sizes), axis=1)
    s = (b - a) / jnp.maximum(a, b)
    return jnp.where((sizes[q_batch] > 1) & jnp.isfinite(s), s, 0.0)


@jax.jit
def _silhouette_reference_chunk(q: jax.Array, q_batch: jax.Array, in_reference: jax.Array, ref: jax.Array,
                                sq_ref: jax.Array, onehot: jax.Array, ref_sizes: jax.Array,
                                sizes: jax.Array) -> jax.Array:
    """`_silhouette_chunk` with each batch's mean distance taken over its reference rows (a query among them
    leaves itself out); `sizes` are the batches' full sizes (a singleton batch scores 0, as there)."""
    d = jnp.sqrt(jnp.maximum(jnp.sum(q * q, 1)[:, None] + sq_ref[None, :] - 2.0 * q @ ref.T, 0.0))
    per_batch = d @ onehot
    own = jax.nn.one_hot(q_batch, sizes.shape[0], dtype=bool)
    a = jnp.sum(jnp.where(own, per_batch, 0.0), 1) / (ref_sizes[q_batch] - in_reference)
    b = jnp.min(jnp.where(own | (ref_sizes == 0)[None, :], jnp.inf, per_batch / ref_sizes), axis=1)
    s = (b - a) / jnp.maximum(a, b)
    return jnp.where((sizes[q_batch] > 1) & jnp.isfinite(s), s, 0.0)


def _silhouette_by_reference(xg: np.ndarray, codes: np.ndarray, n_b: int, rng: np.random.Generator) -> np.ndarray:
    """Silhouettes of a large label group against SILHOUETTE_REFERENCE random rows of each batch (O(n·B·R·D))."""
    ref_rows = np.sort(np.concatenate([rng.choice(np.flatnonzero(codes == b), min(SILHOUETTE_REFERENCE,
                                                                                  int(np.sum(codes == b))),
                                                  replace=False) for b in range(n_b)]))
    in_reference = np.zeros(len(xg), np.float32)
    in_reference[ref_rows] = 1.0
    ref = xg[ref_rows]
    onehot = np.eye(n_b, dtype=np.float32)[codes[ref_rows]]
    args = (jnp.asarray(ref), jnp.asarray(np.sum(ref * ref, axis=1)), jnp.asarray(onehot),
            jnp.asarray(onehot.sum(axis=0)), jnp.asarray(np.bincount(codes, minlength=n_b).astype(np.float32)))
    return np.concatenate([np.asarray(_silhouette_reference_chunk(q, pad_rows(qb, _CHUNK).astype(np.int32),
                                                                  pad_rows(r, _CHUNK), *args))[:n_q]
                           for (q, n_q), (qb, _), (r, _) in zip(chunks(xg, _CHUNK), chunks(codes, _CHUNK),
                                                                chunks(in_reference, _CHUNK))])


def silhouette_batch_cells(x: np.ndarray, labels: np.ndarray, batches: np.ndarray, *,
                           exact_max_rows: int = SILHOUETTE_EXACT_MAX_ROWS, seed: int = 0) -> np.ndarray:
    """Per-cell 1 − |silhouette w.r.t. batch| within the cell's label group (scib `silhouette_batch`, rescaled).

    NaN marks cells of label groups that scib skips: one batch only, or every cell its own batch. A label
    group of more than `exact_max_rows` cells (exact silhouettes cost O(n²·D)) measures each cell's mean
    distance to every batch on SILHOUETTE_REFERENCE random cells of that batch (drawn with `seed`): an unbiased
    estimate of each mean, O(n·B·R·D).
    """
    x = np.asarray(x, np.float32)
    x = x - x.mean(axis=0)
    labels, batches = np.asarray(labels), np.asarray(batches)
    out = np.full(len(x), np.nan)
    rng = np.random.default_rng(seed)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        _, codes = np.unique(batches[rows], return_inverse=True)
        n_b = int(codes.max()) + 1
        if n_b == 1 or n_b == len(rows):
            continue
        xg = x[rows]
        if len(rows) > exact_max_rows:
            out[rows] = 1.0 - np.abs(_silhouette_by_reference(xg, codes, n_b, rng))
            continue
        onehot = np.eye(n_b, dtype=np.float32)[codes]
        sizes = onehot.sum(axis=0)
        padded = bucket(len(rows))  # zero one-hot rows: padding adds no distance to any batch
        args = (jnp.asarray(pad_rows(xg, padded)), jnp.asarray(pad_rows(np.sum(xg * xg, axis=1), padded)),
                jnp.asarray(pad_rows(onehot, padded)), jnp.asarray(sizes))
        scores = [np.asarray(_silhouette_chunk(q, pad_rows(qb, _CHUNK).astype(np.int32), *args))[:n_q]
                  for (q, n_q), (qb, _) in zip(chunks(xg, _CHUNK), chunks(codes, _CHUNK))]
        out[rows] = 1.0 - np.abs(np.concatenate(scores))
    return out


def silhouette_batch_score(cell_scores: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """scib's aggregate: mean over label groups of the mean cell score, per row of cell weights (R, N) → (R,).

    Cells with NaN scores (skipped groups) are ignored; a row with no scored cell gives NaN.
    """
    weights = np.ones((1, len(cell_scores))) if weights is None else np.asarray(weights, np.float64)
    valid = np.isfinite(cell_scores)
    means = []
    for label in np.unique(np.asarray(labels)[valid]):
        sel = valid & (labels == label)
        w = weights[:, sel]
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append((w @ cell_scores[sel]) / w.sum(axis=1))
    if not means:
        return np.full(len(weights), np.nan)
    if len(means) == 1:
        return means[0]
    with warnings.catch_warnings():  # a replicate that drew no cell of any label is NaN; callers report it
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(np.stack(means), axis=0)
