"""Tests for lmc_jax.evaluate.kernels.mmd against a direct float64 numpy computation of the unbiased RBF MMD²."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

from lmc_jax.evaluate.kernels import mmd


def _mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Our unbiased MMD² of two whole sets: one block each, drawn once."""
    one_x, one_y = np.zeros(len(x), int), np.zeros(len(y), int)
    kxx = mmd.kernel_block_sums(x, one_x, 1, x, one_x, 1, sigma)
    kyy = mmd.kernel_block_sums(y, one_y, 1, y, one_y, 1, sigma)
    kxy = mmd.kernel_block_sums(x, one_x, 1, y, one_y, 1, sigma)
    ones = np.ones((1, 1))
    return float(mmd.mmd2_from_block_sums(kxx, kyy, kxy, np.array([len(x)]), np.array([len(y)]), ones, ones)[0])


def _mmd2_numpy(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Gretton et al. (2012) eq. 3, written out: within-set means over i ≠ j, cross mean over all pairs."""
    def k(a, b):
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))

    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


@pytest.mark.parametrize(("m", "n", "shift"), [(40, 40, 0.0), (70, 33, 0.5), (1500, 90, 1.0)])
def test_unbiased_mmd2_matches_direct_formula(m, n, shift):
    rng = np.random.default_rng(m + n)
    x, y = rng.normal(size=(m, 5)), rng.normal(size=(n, 5)) + shift  # m = 1500 spans two kernel chunks
    sigma = 2.3
    assert _mmd2(x, y, sigma) == pytest.approx(_mmd2_numpy(x, y, sigma), rel=1e-4, abs=1e-6)


def test_median_bandwidth_is_the_median_pairwise_distance():
    x = np.random.default_rng(0).normal(size=(200, 7)) * 3
    assert mmd.median_bandwidth(x, np.random.default_rng(1)) == pytest.approx(np.median(pdist(x)), rel=1e-4)
    with pytest.raises(ValueError, match="at least 2 rows"):
        mmd.median_bandwidth(x[:1], np.random.default_rng(1))


def test_mmd2_is_zero_in_expectation_for_one_distribution_and_grows_with_shift():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    sigma = mmd.median_bandwidth(x, rng)
    same = [_mmd2(x, rng.normal(size=(300, 4)), sigma) for _ in range(3)]
    assert max(abs(v) for v in same) < 0.01  # unbiased: fluctuates around 0, may be negative
    shifted = [_mmd2(x, rng.normal(size=(300, 4)) + s, sigma) for s in (0.3, 1.0, 3.0)]
    assert 0.01 < shifted[0] < shifted[1] < shifted[2]


def test_median_heuristic_makes_mmd_scale_invariant():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(120, 3)), rng.normal(size=(100, 3)) + 0.7
    base = _mmd2(x, y, mmd.median_bandwidth(x, np.random.default_rng(0)))
    scaled = _mmd2(50 * x, 50 * y, mmd.median_bandwidth(50 * x, np.random.default_rng(0)))
    assert scaled == pytest.approx(base, rel=1e-4)


def test_block_resample_excludes_copies_of_the_same_row_from_within_set_pairs():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(9, 3)) + 0.4
    bx, by = np.arange(12) % 4, np.arange(9) % 3
    sigma = 1.7
    kxx = mmd.kernel_block_sums(x, bx, 4, x, bx, 4, sigma)
    kyy = mmd.kernel_block_sums(y, by, 3, y, by, 3, sigma)
    kxy = mmd.kernel_block_sums(x, bx, 4, y, by, 3, sigma)
    cx, cy = np.array([[2.0, 0, 1, 1]]), np.array([[0.0, 3, 0]])
    got = mmd.mmd2_from_block_sums(kxx, kyy, kxy, np.bincount(bx), np.bincount(by), cx, cy)[0]
    wx, wy = cx[0][bx], cy[0][by]  # each row's weight = its block's count
    k = lambda a, b: np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma**2))  # noqa: E731
    def within(kk, w):
        off = kk * np.outer(w, w)
        return (off.sum() - np.trace(off)) / (w.sum() ** 2 - np.sum(w * w))
    expected = within(k(x, x), wx) + within(k(y, y), wy) - 2 * (wx @ k(x, y) @ wy) / (wx.sum() * wy.sum())
    assert got == pytest.approx(expected, rel=1e-5)
    ones = mmd.mmd2_from_block_sums(kxx, kyy, kxy, np.bincount(bx), np.bincount(by), np.ones((1, 4)), np.ones((1, 3)))
    assert ones[0] == pytest.approx(_mmd2_numpy(x, y, sigma), rel=1e-5)
    lone = mmd.mmd2_from_block_sums(kxx, kyy, kxy, np.bincount(bx), np.bincount(by), np.array([[0.0, 0, 0, 0]]), cy)
    assert np.isnan(lone[0])  # an empty resample is undefined, not a division error


def test_bandwidth_falls_back_to_the_mean_distance_when_most_rows_coincide():
    x = np.zeros((30, 3))
    x[:5] = np.random.default_rng(5).normal(size=(5, 3))  # 25 identical rows: the median distance is 0
    assert mmd.median_bandwidth(x, np.random.default_rng(0)) == pytest.approx(np.mean(pdist(x)), rel=1e-5)
    assert mmd.median_bandwidth(np.ones((10, 3)), np.random.default_rng(0)) == 0.0
