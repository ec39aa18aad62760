"""Tests for lmc_jax.evaluate.kernels.separation against float64 numpy/scipy references and closed forms."""

import jax
import numpy as np
import pytest
from scipy import linalg

from lmc_jax.evaluate.kernels import separation as sep


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


def test_same_id_hits_find_the_same_tiles():
    rng = np.random.default_rng(9)
    ref = rng.normal(size=(30, 8))
    ids = np.arange(30)
    perm = rng.permutation(30)
    query = ref[perm] + 0.01 * rng.normal(size=(30, 8))
    assert sep.same_id_hits(query, ids[perm], ref, ids).all()
    assert sep.same_id_hits(query, ids, ref, ids).mean() < 0.2


def test_same_id_hits_over_several_chunks_match_brute_force():
    rng = np.random.default_rng(10)
    ref, query = rng.normal(size=(50, 6)), rng.normal(size=(1100, 6))  # 3 chunks of 512 queries
    ids = np.arange(50)
    query_ids = rng.integers(0, 50, size=1100)
    cos = (query / np.linalg.norm(query, axis=1, keepdims=True)) @ (ref / np.linalg.norm(ref, axis=1, keepdims=True)).T
    np.testing.assert_array_equal(sep.same_id_hits(query, query_ids, ref, ids), np.argmax(cos, axis=1) == query_ids)


def test_gaussian_fit_over_row_chunks_matches_numpy():
    x = np.random.default_rng(11).normal(size=(20_000, 3)).astype(np.float32) * [1.0, 10.0, 0.1] + 100.0
    mean, cov = sep.gaussian_fit(x)  # 3 chunks of 8192 rows, centred before accumulating
    np.testing.assert_allclose(mean, x.astype(np.float64).mean(0), rtol=1e-7)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-4, atol=1e-6)


def test_sliced_w2_is_the_same_with_directions_in_several_chunks():
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(80, 5)), rng.normal(size=(60, 5)) + 0.3
    key = jax.random.key(5)
    many = sep.sliced_wasserstein(x, y, key, num_projections=200)  # chunks of 64, 64, 64, 8
    theta = np.random.default_rng(np.asarray(jax.random.key_data(key))).normal(size=(5, 200))
    theta /= np.linalg.norm(theta, axis=0)
    w2 = [_w2_1d_numpy(x @ t, y @ t) ** 2 for t in theta.T]
    assert many == pytest.approx(np.sqrt(np.mean(w2)), rel=1e-4)


def test_frechet_draws_track_explicitly_resampled_fd_and_are_exact_at_the_point():
    rng = np.random.default_rng(13)
    a = rng.normal(size=(4, 4))
    x = rng.normal(size=(4000, 4)) @ a
    y = rng.normal(size=(4000, 4)) @ (a + 0.3 * rng.normal(size=(4, 4))) + 0.2
    bx, by = rng.integers(0, 50, 4000), rng.integers(0, 50, 4000)
    cx = np.concatenate([np.ones((1, 50)), rng.multinomial(50, np.full(50, 0.02), size=20)])
    cy = np.concatenate([np.ones((1, 50)), rng.multinomial(50, np.full(50, 0.02), size=20)])
    got = sep.frechet_replicates(sep.block_moments(x, bx, 50), cx, [(sep.block_moments(y, by, 50), cy)])[0]
    assert got[0] == pytest.approx(sep.frechet_distance(x, y), rel=1e-6)  # float32 block sums
    exact = np.array([sep.frechet_distance(np.repeat(x, cx[r][bx].astype(int), axis=0),
                                           np.repeat(y, cy[r][by].astype(int), axis=0)) for r in range(1, 21)])
    assert np.corrcoef(got[1:], exact)[0, 1] > 0.98  # first order in the covariances, exact in the means
    assert np.std(got[1:]) == pytest.approx(np.std(exact), rel=0.2)


def test_frechet_draw_spread_matches_fresh_samples():
    """The bootstrap spread should estimate the sampling spread of FD over fresh data sets."""
    rng = np.random.default_rng(14)
    a = rng.normal(size=(16, 16)) / 4
    b = a + 0.1 * rng.normal(size=(16, 16))

    def sample():
        return rng.normal(size=(1500, 16)) @ a, rng.normal(size=(1500, 16)) @ b + 0.1

    fresh = np.std([sep.frechet_distance(*sample()) for _ in range(150)])
    x, y = sample()
    counts = [rng.multinomial(60, np.full(60, 1 / 60), size=200).astype(float) for _ in range(2)]
    ids = rng.integers(0, 60, 1500)
    draws = sep.frechet_replicates(sep.block_moments(x, ids, 60), counts[0],
                                   [(sep.block_moments(y, ids, 60), counts[1])])[0]
    assert np.std(draws) == pytest.approx(fresh, rel=0.35)


def test_frechet_draws_with_fewer_than_two_rows_are_nan():
    rng = np.random.default_rng(15)
    x, y = rng.normal(size=(60, 4)), rng.normal(size=(45, 4))
    one_row = sep.frechet_replicates(sep.block_moments(x, np.arange(60) // 59, 2), np.array([[0.0, 1.0], [1.0, 1.0]]),
                                     [(sep.block_moments(y, np.zeros(45, int), 1), np.ones((2, 1)))])
    assert np.isnan(one_row[0, 0]) and np.isfinite(one_row[0, 1])  # a single row has no covariance: NaN, no crash


def test_moments_of_parts_about_a_shared_centre_add_up_to_the_whole():
    rng = np.random.default_rng(16)
    x = rng.normal(size=(300, 5)) * 2 + 3
    ids, labels = rng.integers(0, 7, 300), rng.integers(0, 2, 300)
    centre = x.mean(axis=0)
    parts = [sep.block_moments(x[labels == c], ids[labels == c], 7, centre=centre) for c in (0, 1)]
    whole = sep.block_moments(x, ids, 7)
    total = sep.sum_moments(parts)
    np.testing.assert_allclose(total.n, whole.n)
    np.testing.assert_allclose(total.outer, whole.outer, rtol=1e-4, atol=1e-3)
    counts = rng.multinomial(7, np.full(7, 1 / 7), size=(4,)).astype(float)
    y_m = sep.block_moments(rng.normal(size=(200, 5)), rng.integers(0, 7, 200), 7)
    np.testing.assert_allclose(sep.frechet_replicates(total, counts, [(y_m, counts)]),
                               sep.frechet_replicates(whole, counts, [(y_m, counts)]), rtol=1e-5)
