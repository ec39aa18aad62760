"""Robustness scores public leaderboards rank pathology foundation models by: plismbench and PathoROB.

plismbench (github.com/owkin/plism-benchmark; Filiot et al. 2025, arXiv:2501.16239), per pair of slides (a, b)
holding the same n tiles:
- cosine similarity (`plismbench/metrics/cosine_similarity.py`): the MEAN over the n tiles of cos(a_i, b_i), the
  diagonal of the a × b cosine matrix, on the raw features;
- top-k accuracy (`plismbench/metrics/retrieval.py`): the 2n tiles of both slides are pooled; each tile's k nearest
  OTHER pooled tiles by cosine (itself excluded, the rest of its own slide included) are found, a→b accuracy is the
  share of a's tiles whose own tile at b is among them, and the score averages a→b and b→a;
- aggregation (`plismbench/utils/aggregate.py`, README "Benchmark"): pairs are grouped into cross-scanner (same
  staining, other scanner), cross-staining (same scanner, other staining) and cross-scanner-cross-staining (both
  differ); the leaderboard metric is the mean of 4 MEDIANS over pairs: cosine over all pairs, and top-10 accuracy
  over the cross-scanner, the cross-staining and the cross-scanner-cross-staining pairs.

PathoROB robustness index (github.com/bifold-pathomics/PathoROB; arXiv:2507.17845,
`pathorob/robustness_index/robustness_index_utils.py`): embeddings are L2-normalised, every sample's k nearest
neighbours among all samples are found after removing those of its own case (slide), and, pooled over samples and
their first k neighbours, SO = neighbours of the same biological class from another medical centre, OS = of the
other class from the same centre; RI = ΣSO / (ΣSO + ΣOS). Its default k per data set is the median over models of
the k maximising kNN balanced accuracy (`robustness_index.py`, `get_median_k_opt_given_dataset`): 11 for Camelyon,
61 for TCGA 2x2, 46 for Tolkach ESCA.

Neighbours come from `integration.knn` (exact, jitted, 512 query rows per step: memory one 512 × N distance block,
never N × N); Euclidean order on unit rows is cosine order (‖u − v‖² = 2 − 2 cos). Everything else is O(N·k) or
O(N·D) numpy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, integration

PAIR_GROUPS = ("cross_scanner", "cross_staining", "cross_both")  # plismbench's robustness types, in its order
_ROW_BLOCK = 8192  # rows per step of the O(N·D) row-wise cosine (bounds its float64 temporaries)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows of x scaled to unit L2 norm (float32); an all-zero row stays zero (cosine 0 with everything)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norm, np.finfo(np.float32).tiny)


def paired_cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(a_i, b_i) for every row i of two (n, D) arrays (the same tiles at two sites) → (n,) float64 in [−1, 1]
    (float64 sums, clipped: round-off must not put a constant encoder's 1 above the metric's range)."""
    if np.shape(a) != np.shape(b):
        raise ValueError(f"paired_cosine: a and b must have the same shape; got {np.shape(a)} and {np.shape(b)}.")
    out = np.empty(len(a))
    for start in range(0, len(a), _ROW_BLOCK):
        pa, pb = (np.asarray(v[start:start + _ROW_BLOCK], np.float64) for v in (a, b))
        norms = np.linalg.norm(pa, axis=1) * np.linalg.norm(pb, axis=1)
        dots = np.einsum("ij,ij->i", pa, pb)
        out[start:start + len(pa)] = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return np.clip(out, -1.0, 1.0)


def _rank_among_others(indices: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Position of row r's `target[r]` among its neighbours `indices[r]` once r itself is dropped; width if absent.

    `indices` are nearest first and may hold the row itself anywhere (ties) or not at all.
    """
    rows, width = np.arange(len(indices))[:, None], indices.shape[1]
    found = indices == target[:, None]
    position = np.where(found.any(axis=1), found.argmax(axis=1), width)
    self_before = np.any((indices == rows) & (np.arange(width)[None, :] < position[:, None]), axis=1)
    return position - self_before


def retrieval_hits(a: np.ndarray, b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """plismbench's top-k retrieval of one pair: a, b (n, D), row i of both = tile i at the two sites.

    The 2n rows are pooled; (hits of a's tiles, hits of b's tiles), each (n,) bool: True where the tile's rendering
    at the other site is among its k nearest (cosine) pooled rows other than itself. k is capped at 2n − 1.
    """
    n = len(a)
    if np.shape(a) != np.shape(b) or n < 1:
        raise ValueError(f"retrieval_hits: need two non-empty arrays of one shape; got {np.shape(a)}, {np.shape(b)}.")
    k = min(k, 2 * n - 1)
    indices, _ = integration.knn(np.concatenate([unit_rows(a), unit_rows(b)]), k + 1)
    partner = np.concatenate([np.arange(n, 2 * n), np.arange(n)])
    hits = _rank_among_others(indices, partner) < k
    return hits[:n], hits[n:]


def pair_group(a: tuple[str, str], b: tuple[str, str]) -> str | None:
    """plismbench's robustness type of a pair of (scanner, staining) sites; None when neither differs."""
    scanner, staining = a[0] != b[0], a[1] != b[1]
    if scanner and staining:
        return "cross_both"
    return "cross_scanner" if scanner else "cross_staining" if staining else None


def plism_summary(cosine: np.ndarray, top10: np.ndarray, groups: Sequence[str | None]) -> dict[str, np.ndarray]:
    """plismbench's medians over pairs (axis 0) of (pairs,) or (pairs, R) values, R = a point and bootstrap draws.

    Returns {"cosine": median cosine over all pairs, "top10": median top-10 over all pairs, one "top10_<group>" per
    group of PAIR_GROUPS with pairs, "score": the leaderboard metric = mean of the cosine median and the groups'
    top-10 medians (groups without pairs are left out of the mean)}. A NaN value makes its column's medians NaN.
    """
    cosine, top10, groups = np.asarray(cosine, np.float64), np.asarray(top10, np.float64), np.asarray(groups, object)
    if len(cosine) == 0 or cosine.shape != top10.shape or len(groups) != len(cosine):
        raise ValueError(f"plism_summary: need ≥ 1 pair and one group per pair; got {cosine.shape}, {top10.shape}, "
                         f"{len(groups)} groups.")
    out = {"cosine": np.median(cosine, axis=0), "top10": np.median(top10, axis=0)}
    for g in PAIR_GROUPS:
        if np.any(groups == g):
            out[f"top10_{g}"] = np.median(top10[groups == g], axis=0)
    out["score"] = np.mean([out["cosine"], *(out[f"top10_{g}"] for g in PAIR_GROUPS if f"top10_{g}" in out)], axis=0)
    return out


def so_os_counts(x: np.ndarray, classes: np.ndarray, centres: np.ndarray, cases: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """PathoROB's neighbour counts: per row of x (N, D), among its k nearest rows (cosine) of OTHER cases, how many
    share its class but not its centre (SO) and its centre but not its class (OS) → two (N,) int arrays.

    Neighbours of the row's own case (itself included) are dropped first, as PathoROB drops the query's slide: the
    kNN asks for k + (largest case size) rows so that k others remain; a row with fewer than k rows of other cases
    counts all of them.
    """
    classes, centres, cases = (np.asarray(v) for v in (classes, centres, cases))
    n = len(x)
    if not (len(classes) == len(centres) == len(cases) == n) or n < 2 or k < 1:
        raise ValueError(f"so_os_counts: need N ≥ 2 rows with one class, centre and case each and k ≥ 1; got N={n}, "
                         f"{len(classes)}, {len(centres)}, {len(cases)}, k={k}.")
    _, case_ids, case_sizes = np.unique(cases, return_inverse=True, return_counts=True)
    indices, _ = integration.knn(unit_rows(x), min(n, k + int(case_sizes.max())))
    so, os = np.zeros(n, np.int64), np.zeros(n, np.int64)
    for start in range(0, n, _ROW_BLOCK):  # bounds the (rows, k + case size) boolean temporaries
        rows = slice(start, start + _ROW_BLOCK)
        idx = indices[rows]
        other_case = case_ids[idx] != case_ids[rows, None]
        used = other_case & (np.cumsum(other_case, axis=1) <= k)
        same_class, same_centre = classes[idx] == classes[rows, None], centres[idx] == centres[rows, None]
        so[rows] = np.sum(used & same_class & ~same_centre, axis=1)
        os[rows] = np.sum(used & ~same_class & same_centre, axis=1)
    return so, os


def robustness_index(so: np.ndarray, os: np.ndarray) -> np.ndarray:
    """SO / (SO + OS) elementwise (pooled counts, e.g. one per bootstrap draw); NaN where SO + OS = 0."""
    so = np.asarray(so, np.float64)
    return bootstrap.ratio(so, so + np.asarray(os, np.float64))


def site_factors(site: str, source: str, changes: Mapping[str, str]) -> tuple[str, str]:
    """(scanner, staining) of a site: the source's, or the site's own for what `changes[site]` names ("scanner",
    "staining" or "both"; an unlisted site changes both). The source is the reference whatever it lists."""
    if site == source:
        return source, source
    change = changes.get(site, "both")
    return (site if change in ("scanner", "both") else source, site if change in ("staining", "both") else source)
