"""Unbiased RBF maximum mean discrepancy (MMD²) with a median-heuristic bandwidth, chunked JAX.

Kernel sums are reduced to bootstrap-block sums while they are computed (memory: one chunk of
kernel rows), and the unbiased U-statistic of any block resample follows from those sums.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.evaluate.kernels.bootstrap import ratio
from lmc_jax.evaluate.kernels.padding import bucket, chunks, pad_rows

_CHUNK = 1024  # kernel rows per step


@jax.jit
def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances (|a|, |b|) via the Gram trick, clipped at 0."""
    d2 = jnp.sum(a * a, 1)[:, None] + jnp.sum(b * b, 1)[None, :] - 2.0 * a @ b.T
    return jnp.maximum(d2, 0.0)


def median_bandwidth(x: np.ndarray, rng: np.random.Generator, max_samples: int = 1000) -> float:
    """Median pairwise Euclidean distance among (up to max_samples random) rows of x: the RBF σ (median heuristic).

    If most rows coincide (median 0) the mean pairwise distance is used; 0 only when every row is the same.
    """
    x = np.asarray(x, np.float32)
    if len(x) < 2:
        raise ValueError(f"median_bandwidth needs at least 2 rows; got {len(x)}.")
    if len(x) > max_samples:
        x = x[rng.choice(len(x), max_samples, replace=False)]
    d = np.sqrt(np.asarray(_sq_dists(jnp.asarray(x), jnp.asarray(x)))[np.triu_indices(len(x), 1)])
    median = float(np.median(d))
    return median if median > 0 else float(np.mean(d))


@jax.jit
def _chunk_sums(a: jax.Array, a_onehot: jax.Array, b: jax.Array, b_onehot: jax.Array, gamma: jax.Array) -> jax.Array:
    """a_onehotᵀ · exp(−γ‖a_i − b_j‖²) · b_onehot for one chunk of a's rows → (Ba, Bb)."""
    return a_onehot.T @ (jnp.exp(-gamma * _sq_dists(a, b)) @ b_onehot)


def _one_hot(ids: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """(rows, cols) float32 one-hot of ids (< cols); padding rows and columns are zero."""
    out = np.zeros((rows, cols), np.float32)
    out[np.arange(len(ids)), ids] = 1.0
    return out


def kernel_block_sums(a: np.ndarray, a_ids: np.ndarray, num_a: int, b: np.ndarray, b_ids: np.ndarray, num_b: int,
                      bandwidth: float) -> np.ndarray:
    """S[p, q] = Σ_{i in block p of a, j in block q of b} exp(−‖a_i − b_j‖² / (2σ²)), float64 (num_a, num_b).

    Rows of b and block counts are padded to size buckets (zero one-hot weight), so one compile
    serves many set sizes; memory is one chunk of 1024 x |b| kernel values.
    """
    cols_a, cols_b, rows_b = bucket(num_a), bucket(num_b), bucket(len(b))
    b_hot = jnp.asarray(_one_hot(np.asarray(b_ids), rows_b, cols_b))
    b_pad = jnp.asarray(pad_rows(b, rows_b))
    a_ids = np.asarray(a_ids)
    gamma = np.float32(0.5 / bandwidth**2)
    total = np.zeros((cols_a, cols_b))
    for start, (rows, _) in zip(range(0, len(a), _CHUNK), chunks(a, _CHUNK)):
        hot = _one_hot(a_ids[start:start + _CHUNK], _CHUNK, cols_a)
        total += np.asarray(_chunk_sums(rows, hot, b_pad, b_hot, gamma), np.float64)
    return total[:num_a, :num_b]


def mmd2_from_block_sums(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, nx: np.ndarray, ny: np.ndarray,
                         cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Unbiased MMD² of block-resampled sets: (K,) from block kernel sums and block counts cx (K, Bx), cy (K, By).

    Block b drawn c_b times weights each of its rows by c_b. Within a set the U-statistic averages
    k over pairs of DIFFERENT original rows, Σ_{i≠j} c_i c_j k_ij / Σ_{i≠j} c_i c_j, with
    Σ_{i≠j} c_i c_j k_ij = cᵀSc − Σ_b c_b² n_b (k(x, x) = 1), so copies of one row never pair with
    each other; with c = 1 this is the usual (1/m(m−1)) Σ_{i≠j} k. The cross term is cxᵀSxy cy / (m n).
    Draws with fewer than 2 distinct rows on a side give NaN.
    """
    def within(c: np.ndarray, s: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        total, same = c @ n, (c * c) @ n
        return np.einsum("rb,bc,rc->r", c, s, c) - same, total * total - same

    sxx, pairs_x = within(cx, kxx, nx)
    syy, pairs_y = within(cy, kyy, ny)
    sxy = np.einsum("rb,bc,rc->r", cx, kxy, cy)
    value = ratio(sxx, pairs_x) + ratio(syy, pairs_y) - 2.0 * ratio(sxy, (cx @ nx) * (cy @ ny))
    return np.where((pairs_x > 0) & (pairs_y > 0), value, np.nan)
