"""Tests for lmc_jax.evaluate.kernels.probe against sklearn (AUC exactly, logistic regression closely)."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lmc_jax.evaluate.kernels import bootstrap, probe


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """The point AUC of `block_auc`, every example its own block."""
    blocks = bootstrap.make_blocks(np.zeros(len(y)), None, max_blocks=max(2, len(y)), replicates=0,
                                   rng=np.random.default_rng(0))
    return float(probe.block_auc(probe.auc_block_pairs(blocks, y, score), blocks.ones())[0])


def _problem(seed: int, n: int = 240, d: int = 6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 4.0, size=d) + rng.normal(size=d) * 3
    logits = x[:, 0] - 0.5 * x[:, 1] + rng.normal(size=n)
    return x, (logits > np.median(logits)).astype(int)


@pytest.mark.parametrize("seed", range(4))
def test_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 200))
    y = rng.integers(0, 2, size=n)
    y[:2] = [0, 1]
    score = np.round(rng.normal(size=n) + 0.5 * y, 1)  # rounding creates many ties
    assert _auc(y, score) == pytest.approx(roc_auc_score(y, score), rel=1e-12, abs=0)  # to round-off


def test_auc_extremes_and_one_class():
    y = np.array([0, 0, 1, 1])
    assert _auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert _auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert _auc(y, np.zeros(4)) == 0.5
    assert np.isnan(_auc(np.ones(5, int), np.arange(5.0)))  # callers turn NaN into a reason (see calibration)


@pytest.mark.parametrize(("seed", "l2"), [(0, 1e-2), (1, 1e-1), (2, 1e-3)])
def test_probe_matches_sklearn_logistic_regression(seed, l2):
    x, y = _problem(seed)
    params = probe.fit_logistic(x, y, l2=l2)
    z = (x - x.mean(0)) / x.std(0)
    ref = LogisticRegression(C=1.0 / (l2 * len(y)), tol=1e-10, max_iter=10_000).fit(z, y)
    np.testing.assert_allclose(np.asarray(probe.predict_proba(params, x)), ref.predict_proba(z)[:, 1], atol=1e-4)
    np.testing.assert_allclose(np.asarray(params.w), ref.coef_[0], rtol=1e-3, atol=1e-4)
    assert float(params.b) == pytest.approx(ref.intercept_[0], abs=1e-4)


def test_probe_is_invariant_to_input_scale_via_train_standardisation():
    x, y = _problem(3)
    p1 = probe.predict_proba(probe.fit_logistic(x, y), x)
    p2 = probe.predict_proba(probe.fit_logistic(1e3 * x + 5, y), 1e3 * x + 5)
    np.testing.assert_allclose(np.asarray(p1), np.asarray(p2), atol=1e-5)


def test_probe_rejects_bad_input():
    x, y = _problem(4, n=20)
    with pytest.raises(ValueError, match="both 0 and 1"):
        probe.fit_logistic(x, np.ones_like(y))
    x_nan = x.copy()
    x_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probe.fit_logistic(x_nan, y)


def test_warm_start_reaches_the_same_probe():
    x, y = _problem(5, n=400)
    previous = probe.fit_logistic(x[:300] * 2.0 + 1.0, y[:300])  # other rows, other feature scale
    cold = probe.fit_logistic(x, y, tol=1e-6)
    warm = probe.fit_logistic(x, y, tol=1e-6, init=previous)
    np.testing.assert_allclose(warm.w, cold.w, atol=1e-4)
    assert warm.b == pytest.approx(cold.b, abs=1e-4)
    # with no Newton step the warm start is exactly the old decision function, re-expressed on the new z-scores
    start = probe.fit_logistic(x, y, max_iter=0, init=previous)
    np.testing.assert_allclose(probe.predict_proba(start, x), probe.predict_proba(previous, x), rtol=1e-5)


def test_subsampled_hessian_newton_reaches_the_exact_newton_probe(monkeypatch):
    x, y = _problem(4, n=3000, d=12)
    exact = probe.fit_logistic(x, y, l2=1e-2)
    monkeypatch.setattr(probe, "NEWTON_HESSIAN_ROWS", 256)  # 3000 rows: Hessian of a 256-row subsample
    sub = probe.fit_logistic(x, y, l2=1e-2)
    # both stop at max|gradient| < 1e-5 (exact Newton well below it): the same optimum to that tolerance
    np.testing.assert_allclose(np.asarray(probe.predict_proba(sub, x)), np.asarray(probe.predict_proba(exact, x)),
                               atol=1e-5)
    np.testing.assert_allclose(np.asarray(sub.w), np.asarray(exact.w), atol=1e-4)
