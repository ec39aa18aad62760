"""Probe predictions → decision and calibration metrics: F1 threshold, F1, balanced accuracy, Brier, ECE, AUC.

Every metric is a function of per-block sums (see `bootstrap`), so the point value and each
bootstrap replicate come from the same formula. The decision threshold is chosen on SOURCE
validation data by `f1_threshold` and passed in: nothing here ever sees which split it scores.
"""

from __future__ import annotations

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap
from lmc_jax.evaluate.kernels.probe import Undefined, auc_block_pairs, block_auc

METRICS = ("auc", "f1", "balanced_accuracy", "brier", "ece")
BOUNDS = dict.fromkeys(METRICS, (0.0, 1.0))  # natural ranges, for clipping intervals


def f1_threshold(y: np.ndarray, p: np.ndarray) -> float | Undefined:
    """The score t maximising F1 of the rule p ≥ t on (y, p) — pass SOURCE validation data only.

    Candidates are the distinct scores; ties in F1 go to the highest t (fewest positives).
    """
    y, p = np.asarray(y), np.asarray(p, np.float64)
    if len(np.unique(y)) < 2:
        return Undefined(f"validation set has one class (label {int(y[0]) if len(y) else 'none'}) "
                         f"among {len(y)} examples")
    order = np.argsort(-p, kind="stable")
    ps, ys = p[order], y[order]
    last = np.r_[ps[1:] != ps[:-1], True]  # last position of each distinct score: predict positive up to here
    tp = np.cumsum(ys)[last]
    predicted = np.flatnonzero(last) + 1
    f1 = 2 * tp / (predicted + ys.sum())
    return float(ps[last][int(np.argmax(f1))])


def bin_ids(p: np.ndarray, num_bins: int) -> np.ndarray:
    """Equal-width probability bins on [0, 1], edges as sklearn's calibration_curve(strategy='uniform')."""
    edges = np.linspace(0.0, 1.0, num_bins + 1)
    return np.searchsorted(edges[1:-1], np.asarray(p, np.float64))


def reliability(y: np.ndarray, p: np.ndarray, num_bins: int) -> dict[str, list]:
    """Reliability-diagram data per bin: count, mean predicted P(y=1), observed fraction of positives (None if empty)."""
    ids = bin_ids(p, num_bins)
    count = np.bincount(ids, minlength=num_bins)
    mean_p = np.bincount(ids, weights=p, minlength=num_bins)
    pos = np.bincount(ids, weights=np.asarray(y, np.float64), minlength=num_bins)
    fill = [c > 0 for c in count]
    return {"count": count.tolist(),
            "mean_predicted": [float(s / c) if f else None for s, c, f in zip(mean_p, count, fill)],
            "fraction_positive": [float(s / c) if f else None for s, c, f in zip(pos, count, fill)]}


def binary_estimates(y: np.ndarray, p: np.ndarray, threshold: float | np.ndarray, blocks: bootstrap.Blocks,
                     num_bins: int) -> dict[str, bootstrap.Estimate]:
    """AUC, F1 and balanced accuracy of p ≥ threshold, Brier score and ECE (num_bins equal-width bins on P(y=1)).

    `threshold` is a scalar or one per row (out-of-fold predictions carry their fold's threshold).
    ECE = Σ_bins |Σ_i∈bin (y_i − p_i)| / N, i.e. Σ (n_b/N)·|mean y − mean p| per bin. Estimates carry
    block-bootstrap replicates; undefined values (one class present, no examples) carry their reason.
    """
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    pred = (p >= threshold).astype(np.float64)
    resid = np.zeros((len(y), num_bins))
    resid[np.arange(len(y)), bin_ids(p, num_bins)] = y - p
    sums = bootstrap.block_sums(blocks, np.column_stack([np.ones_like(y), y, pred * y, pred, (p - y) ** 2, resid]))

    def stat(column):
        return lambda counts: counts @ sums[:, column]

    n, pos, tp, predicted = stat(0), stat(1), stat(2), stat(3)
    n_pos = int(y.sum())
    one_class = (f"only one class (label {int(y[0])}) among {len(y)} examples" if len(y) and n_pos in (0, len(y))
                 else "no examples")
    pairs = auc_block_pairs(blocks, y, p)

    def balanced_accuracy(c):
        negatives, true_negatives = n(c) - pos(c), n(c) - pos(c) - predicted(c) + tp(c)
        return 0.5 * (bootstrap.ratio(tp(c), pos(c)) + bootstrap.ratio(true_negatives, negatives))

    return {
        "auc": bootstrap.estimate(blocks, lambda c: block_auc(pairs, c), one_class),
        "f1": bootstrap.estimate(blocks, lambda c: bootstrap.ratio(2 * tp(c), predicted(c) + pos(c)),
                                 "no positive labels and no positive predictions"),
        "balanced_accuracy": bootstrap.estimate(blocks, balanced_accuracy, one_class),
        "brier": bootstrap.estimate(blocks, lambda c: bootstrap.ratio(stat(4)(c), n(c)), "no examples"),
        "ece": bootstrap.estimate(blocks, lambda c: bootstrap.ratio(np.abs(c @ sums[:, 5:]).sum(axis=1), n(c)),
                                  "no examples"),
    }
