"""Batch-mixing metrics of single-cell integration, as scib-metrics defines them: silhouette-batch, iLISI, kBET.

Per-cell scores come from exact chunked JAX computations (k-nearest neighbours, silhouette
distances); aggregation into scib's summary numbers is separate so a bootstrap can reweight cells.
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


def knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row of x (N, D) among all rows, the row itself included.

    Returns (indices int32 (N, k), Euclidean distances float32 (N, k)), nearest first. Memory: one
    chunk of 512 x N distances. Rows are centred first (smaller Gram-trick round-off).
    """
    x = np.asarray(x, np.float32)
    if not 1 <= k <= len(x):
        raise ValueError(f"knn: need 1 ≤ k ≤ N; got k={k}, N={len(x)}.")
    x = x - x.mean(axis=0)
    xj, sq = jnp.asarray(x), jnp.asarray(np.sum(x * x, axis=1))
    idx, dist = [], []
    for q, n_q in chunks(x, _CHUNK):
        d, i = _knn_chunk(q, xj, sq, k)
        dist.append(np.asarray(d)[:n_q])
        idx.append(np.asarray(i)[:n_q])
    return np.concatenate(idx).astype(np.int32), np.concatenate(dist)


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
    v, w = values[order], weights[:, order]
    cum = np.cumsum(w, axis=1)
    total = cum[:, -1:]
    lower = np.argmax(cum >= total / 2, axis=1)  # first value whose cumulative weight reaches half
    upper = np.argmax(cum > total / 2, axis=1)
    even = np.isclose(cum[np.arange(len(w)), lower], total[:, 0] / 2)
    median = np.where(even, 0.5 * (v[lower] + v[upper]), v[lower])
    return np.where(total[:, 0] > 0, median, np.nan)


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


def silhouette_batch_cells(x: np.ndarray, labels: np.ndarray, batches: np.ndarray) -> np.ndarray:
    """Per-cell 1 − |silhouette w.r.t. batch| within the cell's label group (scib `silhouette_batch`, rescaled).

    NaN marks cells of label groups that scib skips: one batch only, or every cell its own batch.
    """
    x = np.asarray(x, np.float32)
    x = x - x.mean(axis=0)
    labels, batches = np.asarray(labels), np.asarray(batches)
    out = np.full(len(x), np.nan)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        _, codes = np.unique(batches[rows], return_inverse=True)
        n_b = int(codes.max()) + 1
        if n_b == 1 or n_b == len(rows):
            continue
        xg = x[rows]
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
