"""Tests for lmc_jax.evaluate.kernels.signatures: the L1 path against scikit-learn (saga), λ_max, CV choice, Jaccard, stability."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from lmc_jax.evaluate.kernels import signatures


def _problem(seed: int, n: int = 300, d: int = 8, informative=(0, 1)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d) + 1.0
    z = (x - x.mean(0)) / x.std(0)
    logit = sum(((-1) ** i) * 1.5 * z[:, j] for i, j in enumerate(informative))
    return x, (logit + rng.normal(size=n) > 0).astype(int)


def test_l1_path_matches_sklearn_saga_on_z_scored_features():
    x, y = _problem(0)
    z = (x - x.mean(0)) / x.std(0)
    lambdas = signatures.lambda_max(x, y) * np.geomspace(1.0, 0.01, 6)
    w, b = signatures.l1_logistic_path(x, y, lambdas, max_iter=20_000, tol=1e-8)
    assert not w[0].any() and b[0] == pytest.approx(np.log(y.mean() / (1 - y.mean())), abs=1e-5)
    for lam, wi, bi in zip(lambdas[1:], w[1:], b[1:]):
        ref = LogisticRegression(l1_ratio=1.0, C=1.0 / (lam * len(y)), solver="saga", tol=1e-12,
                                 max_iter=200_000).fit(z, y)
        np.testing.assert_allclose(wi, ref.coef_[0], atol=1e-5)
        assert bi == pytest.approx(ref.intercept_[0], abs=1e-5)
        np.testing.assert_array_equal(wi != 0, np.abs(ref.coef_[0]) > 1e-6)  # same selected dimensions


def test_zero_padding_rows_do_not_change_the_path():
    x, y = _problem(1, n=100)
    lambdas = signatures.lambda_max(x, y) * np.geomspace(0.5, 0.05, 4)
    w, b = signatures.l1_logistic_path(x, y, lambdas, max_iter=5000, tol=1e-7)
    wp, bp = signatures.l1_logistic_path(x, y, lambdas, max_iter=5000, tol=1e-7, pad_to=256)
    np.testing.assert_allclose(wp, w, atol=1e-5)
    np.testing.assert_allclose(bp, b, atol=1e-5)


def test_signature_finds_the_informative_dimensions_and_is_stable():
    x, y = _problem(2, n=600, d=12, informative=(3, 7))
    groups = np.arange(600) % 20
    sig = signatures.sparse_signature(x, y, groups, num_folds=5, num_lambdas=15, stability_rounds=10,
                                      rng=np.random.default_rng(0))
    assert {3, 7} <= set(sig["dims"]) and sig["size"] == len(sig["dims"]) < 12
    assert sig["fold_jaccard"] > 0.3 and sig["grouped"]
    assert {3, 7} <= set(sig["stable_dims"]) and sig["stability"][3] == 1.0
    assert sig["C"] == pytest.approx(1.0 / (sig["lambda"] * 600))
    assert np.argmin(sig["cv_log_loss"]) == sig["lambdas"].index(sig["lambda"])


def test_jaccard_and_undefined_cases():
    assert signatures.jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert signatures.jaccard(set(), set()) is None
    x, y = _problem(3, n=60)
    one = signatures.sparse_signature(x, np.zeros(60, int), None, num_folds=3, num_lambdas=4, stability_rounds=0,
                                      rng=np.random.default_rng(0))
    assert "need both 0 and 1" in one["undefined"]
    single_group = signatures.sparse_signature(x, y, np.zeros(60), num_folds=3, num_lambdas=4, stability_rounds=0,
                                               rng=np.random.default_rng(0))
    assert "grouped cross-validation needs at least 2" in single_group["undefined"]
    constant = signatures.sparse_signature(np.ones((60, 4)), y, None, num_folds=3, num_lambdas=4,
                                           stability_rounds=0, rng=np.random.default_rng(0))
    assert "every dimension is constant" in constant["undefined"]


def test_signature_above_max_rows_runs_on_whole_groups_and_finds_the_same_dimensions():
    x, y = _problem(4, n=3000, d=12, informative=(3, 7))
    groups = np.arange(3000) % 60
    kwargs = dict(num_folds=5, num_lambdas=15, stability_rounds=0)
    full = signatures.sparse_signature(x, y, groups, rng=np.random.default_rng(0), **kwargs)
    sub = signatures.sparse_signature(x, y, groups, rng=np.random.default_rng(0), max_rows=1000, **kwargs)
    assert full["rows"] == 3000 and 950 <= sub["rows"] <= 1000  # 50-row groups: 19 or 20 of them
    assert {3, 7} <= set(sub["dims"]) and sub["C"] == pytest.approx(1.0 / (sub["lambda"] * sub["rows"]))
    assert signatures.sparse_signature(x, y, groups, rng=np.random.default_rng(0), max_rows=3000, **kwargs) == full
    rows = signatures.group_subsample(groups, 1000, np.random.default_rng(1))
    taken = np.unique(groups[rows])
    assert np.array_equal(rows, np.flatnonzero(np.isin(groups, taken))) and len(rows) <= 1000


def test_l1_path_converges_on_strongly_correlated_dimensions_within_the_default_budget():
    rng = np.random.default_rng(5)  # 64 dims driven by 4 latent factors: an ill-conditioned XᵀX, as embeddings have
    latent = rng.normal(size=(2000, 4))
    x = latent @ rng.normal(size=(4, 64)) + 0.02 * rng.normal(size=(2000, 64))
    y = (latent[:, 0] + 0.5 * rng.normal(size=2000) > 0).astype(int)
    lambdas = signatures.lambda_max(x, y) * np.geomspace(1.0, 0.01, 8)
    z = signatures._augment(x, len(x)).astype(np.float64)

    def objective(w, b, lam):
        logits = z[:, :-1] @ w + b
        return np.mean(np.logaddexp(0.0, logits) - y * logits) + lam * np.abs(w).sum()

    w, b = signatures.l1_logistic_path(x, y, lambdas, tol=1e-4)  # the signature's settings (max_iter 1000)
    w_ref, b_ref = signatures.l1_logistic_path(x, y, lambdas, max_iter=50_000, tol=1e-8)
    for lam, wi, bi, wr, br in zip(lambdas, w, b, w_ref, b_ref):
        assert objective(wi, bi, lam) - objective(wr, br, lam) < 2e-5  # FISTA (1000 steps) stopped 7.5e-5 above


def test_exact_hessian_and_fixed_bound_reach_one_optimum_on_nearly_separable_classes(monkeypatch):
    rng = np.random.default_rng(7)  # classes 6 noise-sd apart on dim 0: p(1 − p) ≪ 1/4, where the bound crawls
    x = rng.normal(size=(400, 16))
    y = (6.0 * x[:, 0] + rng.normal(size=400) > 0).astype(int)
    lambdas = signatures.lambda_max(x, y) * np.geomspace(1.0, 1e-3, 12)
    z = signatures._augment(x, len(x)).astype(np.float64)

    def objective(w, b, lam):
        logits = z[:, :-1] @ w + b
        return np.mean(np.logaddexp(0.0, logits) - y * logits) + lam * np.abs(w).sum()

    assert 512 * 17 * 17 <= signatures.EXACT_HESSIAN_FLOPS  # 400 rows pad to 512: the exact Hessian
    newton = signatures.l1_logistic_path(x, y, lambdas, tol=1e-6)
    monkeypatch.setattr(signatures, "EXACT_HESSIAN_FLOPS", 0)  # read when _path is traced: compile it again
    signatures._path.clear_cache()
    bound = signatures.l1_logistic_path(x, y, lambdas, max_iter=100_000, tol=1e-7)
    signatures._path.clear_cache()
    for lam, wn, bn, wb, bb in zip(lambdas, *newton, *bound):
        assert abs(objective(wn, bn, lam) - objective(wb, bb, lam)) < 1e-5
        np.testing.assert_array_equal(wn != 0, wb != 0)
