"""Tests for lmc_jax.evaluate.kernels.calibration against scikit-learn (F1, balanced accuracy, Brier, AUC, calibration curve)."""

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import (balanced_accuracy_score, brier_score_loss, f1_score, precision_recall_curve,
                             roc_auc_score)

from lmc_jax.evaluate.kernels import bootstrap, calibration, probe


def _predictions(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    p = 1 / (1 + np.exp(-(1.5 * (y - 0.5) + rng.normal(size=n))))
    return y, np.round(p, 2)  # rounding creates ties and scores exactly on bin edges


def _blocks(n: int, replicates: int = 0, groups=None, seed: int = 0) -> bootstrap.Blocks:
    return bootstrap.make_blocks(np.zeros(n), groups, max_blocks=n, replicates=replicates,
                                 rng=np.random.default_rng(seed))


def _ece_sklearn(y, p, bins):
    ids = np.searchsorted(np.linspace(0, 1, bins + 1)[1:-1], p)
    counts = np.bincount(ids, minlength=bins)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=bins, strategy="uniform")
    return float(np.sum(counts[counts > 0] / len(y) * np.abs(prob_true - prob_pred)))


@pytest.mark.parametrize("seed", range(3))
def test_point_metrics_match_sklearn(seed):
    y, p = _predictions(seed)
    t = 0.47
    got = calibration.binary_estimates(y, p, t, _blocks(len(y)), 15)
    pred = (p >= t).astype(int)
    assert got["auc"].value == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    assert got["f1"].value == pytest.approx(f1_score(y, pred), rel=1e-12)
    assert got["balanced_accuracy"].value == pytest.approx(balanced_accuracy_score(y, pred), rel=1e-12)
    assert got["brier"].value == pytest.approx(brier_score_loss(y, p), rel=1e-12)
    assert got["ece"].value == pytest.approx(_ece_sklearn(y, p, 15), rel=1e-10)


def test_reliability_bins_match_sklearn_calibration_curve():
    y, p = _predictions(3)
    curve = calibration.reliability(y, p, 15)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=15, strategy="uniform")
    np.testing.assert_allclose([v for v in curve["fraction_positive"] if v is not None], prob_true)
    np.testing.assert_allclose([v for v in curve["mean_predicted"] if v is not None], prob_pred)
    assert sum(curve["count"]) == len(y)


@pytest.mark.parametrize("seed", range(3))
def test_f1_threshold_reaches_the_best_f1_on_the_validation_set(seed):
    y, p = _predictions(seed + 10, n=120)
    t = calibration.f1_threshold(y, p)
    precision, recall, _ = precision_recall_curve(y, p)
    with np.errstate(invalid="ignore"):
        best = np.nanmax(2 * precision * recall / (precision + recall))
    assert f1_score(y, (p >= t).astype(int)) == pytest.approx(best, rel=1e-12)
    assert isinstance(calibration.f1_threshold(np.ones(5, int), p[:5]), probe.Undefined)


def test_replicates_equal_metrics_of_the_explicit_resample():
    y, p = _predictions(4, n=80)
    groups = np.arange(80) % 11
    blocks = _blocks(80, replicates=6, groups=groups, seed=4)
    got = calibration.binary_estimates(y, p, 0.5, blocks, 15)
    for r in range(6):
        w = blocks.counts[r][blocks.ids].astype(int)
        yr, pr = np.repeat(y, w), np.repeat(p, w)
        assert got["auc"].replicates[r] == pytest.approx(roc_auc_score(yr, pr), rel=1e-12)
        assert got["f1"].replicates[r] == pytest.approx(f1_score(yr, (pr >= 0.5).astype(int)), rel=1e-12)
        assert got["brier"].replicates[r] == pytest.approx(brier_score_loss(yr, pr), rel=1e-12)
        assert got["ece"].replicates[r] == pytest.approx(_ece_sklearn(yr, pr, 15), rel=1e-10)


def test_one_class_makes_auc_and_balanced_accuracy_undefined_but_keeps_brier():
    p = np.linspace(0.1, 0.9, 20)
    got = calibration.binary_estimates(np.ones(20, int), p, 0.5, _blocks(20), 15)
    assert "only one class (label 1) among 20" in got["auc"].value
    assert isinstance(got["balanced_accuracy"].value, str)
    assert got["brier"].value == pytest.approx(np.mean((p - 1) ** 2))
    none = calibration.binary_estimates(np.zeros(4, int), np.full(4, 0.1), 0.5, _blocks(4), 15)
    assert none["f1"].value == "no positive labels and no positive predictions"


def test_per_row_thresholds_apply_row_by_row():
    y, p = _predictions(5, n=50)
    thresholds = np.where(np.arange(50) < 25, 0.3, 0.7)
    got = calibration.binary_estimates(y, p, thresholds, _blocks(50), 15)
    assert got["f1"].value == pytest.approx(f1_score(y, (p >= thresholds).astype(int)))
