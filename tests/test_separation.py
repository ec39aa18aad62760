"""Tests for lmc_jax.evaluate.separation against float64 numpy/scipy references and closed forms."""

import jax
import numpy as np
import pytest
from scipy import linalg

from lmc_jax.evaluate import separation as sep


def _random_gaussian(rng: np.random.Generator, d: int) -> tuple[np.ndarray, np.ndarray]:
    a = rng.normal(size=(d, d))
    return rng.normal(size=d), a @ a.T / d + 0.1 * np.eye(d)


def _fd_scipy(mu1, cov1, mu2, cov2) -> float:
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1 + cov2 - 2 * linalg.sqrtm(cov1 @ cov2).real))


def test_gaussian_fit_matches_numpy():
    x = np.random.default_rng(0).normal(size=(50, 6)) * 3 + 7
    mean, cov = sep.gaussian_fit(x)
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-5)
    np.testing.assert_allclose(cov, np.cov(x, rowvar=False), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_from_stats_matches_scipy(seed):
    rng = np.random.default_rng(seed)
    mu1, cov1 = _random_gaussian(rng, 8)
    mu2, cov2 = _random_gaussian(rng, 8)
    expected = _fd_scipy(mu1, cov1, mu2, cov2)
    assert float(sep.frechet_from_stats(mu1, cov1, mu2, cov2)) == pytest.approx(expected, rel=1e-5)


def test_frechet_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(300, 16)) * 5 + 3
    fd = float(sep.frechet_distance(x, x))
    assert 0.0 <= fd < 1e-5 * np.trace(np.cov(x, rowvar=False))


def test_frechet_of_large_samples_approaches_closed_form():
    rng = np.random.default_rng(1)
    mu1, cov1 = _random_gaussian(rng, 4)
    mu2, cov2 = _random_gaussian(rng, 4)
    x = rng.multivariate_normal(mu1, cov1, size=40_000)
    y = rng.multivariate_normal(mu2, cov2, size=40_000)
    assert float(sep.frechet_distance(x, y)) == pytest.approx(_fd_scipy(mu1, cov1, mu2, cov2), rel=0.03)


def test_full_shrinkage_gives_isotropic_closed_form_when_d_exceeds_n():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(10, 32)), 2.0 * rng.normal(size=(12, 32)) + 0.5
    (mu1, c1), (mu2, c2) = sep.gaussian_fit(x), sep.gaussian_fit(y)
    d = 32
    t1, t2 = float(np.trace(c1)) / d, float(np.trace(c2)) / d
    expected = float(np.sum((np.asarray(mu1) - np.asarray(mu2)) ** 2)) + d * (np.sqrt(t1) - np.sqrt(t2)) ** 2
    assert float(sep.frechet_distance(x, y, shrinkage=1.0)) == pytest.approx(expected, rel=1e-4)
    assert np.isfinite(float(sep.frechet_distance(x, y)))


@pytest.mark.parametrize("c", [1e-4, 1e-2, 3.0, 1e4])
def test_standardised_frechet_is_scale_invariant(c):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 8)) * rng.uniform(0.1, 5, size=8)
    y = x[:150] * 1.3 + 0.4
    base = float(sep.frechet_distance(sep.standardize(x, x), sep.standardize(y, x)))
    scaled = float(sep.frechet_distance(sep.standardize(c * x, c * x), sep.standardize(c * y, c * x)))
    assert base > 0.1
    assert scaled == pytest.approx(base, rel=1e-4)


def test_standardize_uses_reference_statistics_and_floors_dead_dimensions():
    rng = np.random.default_rng(4)
    ref = rng.normal(size=(100, 4)) * [1.0, 2.0, 3.0, 0.0] + [0.0, 1.0, 2.0, 5.0]
    z_ref = np.asarray(sep.standardize(ref, ref))
    np.testing.assert_allclose(z_ref[:, :3].mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(z_ref[:, :3].std(0), 1.0, rtol=1e-4)
    target = ref + rng.normal(size=ref.shape)
    z = np.asarray(sep.standardize(target, ref))
    assert np.all(np.isfinite(z))
    rms_std = np.sqrt(np.mean(ref.std(0) ** 2))
    bound = np.abs(target[:, 3] - 5.0).max() / (sep.STD_REL_FLOOR * rms_std)
    assert np.abs(z[:, 3]).max() == pytest.approx(bound, rel=1e-4)


def test_collapse_gets_no_standardised_advantage_over_a_mixed_encoder():
    """Raw FD would reward collapse by ~1e12; standardised FD puts it at the same sampling floor as a truly
    mixed encoder (sites from one distribution). The probe AUC, not FD, exposes collapse (see test_suite)."""
    rng = np.random.default_rng(5)
    good_a, good_b = rng.normal(size=(200, 8)), rng.normal(size=(200, 8))
    collapsed_a = 1.0 + 1e-6 * rng.normal(size=(200, 8))
    collapsed_b = 1.0 + 1e-6 * rng.normal(size=(200, 8))
    raw_good = float(sep.frechet_distance(good_a, good_b))
    raw_collapsed = float(sep.frechet_distance(collapsed_a, collapsed_b))
    std_good = float(sep.frechet_distance(sep.standardize(good_a, good_a), sep.standardize(good_b, good_a)))
    std_collapsed = float(sep.frechet_distance(sep.standardize(collapsed_a, collapsed_a),
                                               sep.standardize(collapsed_b, collapsed_a)))
    assert raw_collapsed < 1e-6 * raw_good
    assert 0.3 < std_collapsed / std_good < 3.0


def _w2_1d_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Exact W2 of two 1-D empirical measures: repeat each sample so both sets have n*m atoms, match sorted."""
    sa = np.sort(np.repeat(a, len(b)))
    sb = np.sort(np.repeat(b, len(a)))
    return float(np.sqrt(np.mean((sa - sb) ** 2)))


def test_sliced_w2_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(6).normal(size=(120, 10))
    assert float(sep.sliced_wasserstein(x, x, jax.random.key(0))) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("shift", [-2.5, 0.7])
def test_sliced_w2_of_shifted_1d_sets_is_the_shift(shift):
    x = np.random.default_rng(7).normal(size=(90, 1))
    assert float(sep.sliced_wasserstein(x, x + shift, jax.random.key(1))) == pytest.approx(abs(shift), rel=1e-5)


@pytest.mark.parametrize(("n", "m"), [(40, 40), (100, 37), (13, 64)])
def test_sliced_w2_in_1d_is_exact_w2_for_unequal_sizes(n, m):
    rng = np.random.default_rng(n + m)
    a, b = rng.normal(size=n), rng.exponential(size=m) + 0.3
    got = float(sep.sliced_wasserstein(a[:, None], b[:, None], jax.random.key(2)))
    assert got == pytest.approx(_w2_1d_numpy(a, b), rel=1e-5)


def test_sliced_w2_of_shifted_sets_in_d_dims_and_scale():
    rng = np.random.default_rng(8)
    d = 6
    x = rng.normal(size=(300, d))
    v = rng.normal(size=d)
    got = float(sep.sliced_wasserstein(x, x + v, jax.random.key(3), num_projections=4096))
    # For a pure shift, W2 along θ is |θ·v| and E[(θ·v)²] = ‖v‖²/D over uniform unit directions.
    assert got == pytest.approx(np.linalg.norm(v) / np.sqrt(d), rel=0.05)
    y = rng.normal(size=(250, d)) * 1.5
    key = jax.random.key(4)
    assert float(sep.sliced_wasserstein(7 * x, 7 * y, key)) == pytest.approx(
        7 * float(sep.sliced_wasserstein(x, y, key)), rel=1e-4)


def test_matched_top1_finds_the_same_tiles():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(30, 8))
    ids = np.arange(30)
    perm = rng.permutation(30)
    query = ref[perm] + 0.01 * rng.normal(size=(30, 8))
    assert float(sep.matched_top1(query, ids[perm], ref, ids)) == 1.0
    assert float(sep.matched_top1(query, ids, ref, ids)) < 0.2
