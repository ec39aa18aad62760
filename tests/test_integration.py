"""Tests for lmc_jax.evaluate.kernels.integration: exact kNN vs scikit-learn, silhouette vs scikit-learn, and
silhouette-batch / iLISI / kBET vs scib-metrics (a test-only dependency; those tests skip without it)."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from lmc_jax.evaluate.kernels import integration


def _data(seed: int, n: int = 600, batch_shift: float = 0.8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch, labels = rng.integers(0, 3, n), rng.integers(0, 2, n)
    x = rng.normal(size=(n, 8))
    x[:, 0] += batch_shift * batch
    x[:, 1] += 2.0 * labels
    return x, labels, batch


def test_knn_matches_sklearn_and_includes_self():
    x, _, _ = _data(0, n=1100)  # three query chunks
    idx, dist = integration.knn(x, 30)
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=30).fit(x).kneighbors(x)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.999
    assert (idx[:, 0] == np.arange(len(x))).all()
    with pytest.raises(ValueError, match="1 ≤ k ≤ N"):
        integration.knn(x[:5], 6)


def test_silhouette_batch_cells_match_sklearn_within_each_label():
    x, labels, batch = _data(1)
    cells = integration.silhouette_batch_cells(x, labels, batch)
    for label in (0, 1):
        rows = labels == label
        expected = 1 - np.abs(silhouette_samples(x[rows], batch[rows]))
        np.testing.assert_allclose(cells[rows], expected, atol=1e-5)


def test_silhouette_batch_skips_label_groups_with_one_batch_like_scib():
    x, labels, batch = _data(2, n=200)
    batch[labels == 1] = 0  # label 1 seen in one batch only: scib skips the group
    cells = integration.silhouette_batch_cells(x, labels, batch)
    assert np.isnan(cells[labels == 1]).all() and np.isfinite(cells[labels == 0]).all()
    score = integration.silhouette_batch_score(cells, labels)[0]
    assert score == pytest.approx(np.mean(cells[labels == 0]))
    assert np.isnan(integration.silhouette_batch_score(np.full(5, np.nan), np.zeros(5))[0])


def test_mixing_scores_for_identical_and_separated_batches():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(900, 6))
    labels = rng.integers(0, 2, 900)
    mixed = rng.integers(0, 3, 900)  # batches drawn from one distribution
    idx, dist = integration.knn(x, 90)
    assert integration.kbet_cells(idx[:, :50], mixed)[0].mean() > 0.9  # ≈ 1 − α under perfect mixing
    # finite neighbourhoods (perplexity 30) see multinomial noise: mixed batches give ~0.8, not exactly 1
    assert integration.ilisi_score(integration.lisi(idx, dist, mixed), 3)[0] > 0.75
    assert integration.silhouette_batch_score(integration.silhouette_batch_cells(x, labels, mixed), labels)[0] > 0.95
    apart = x + 10.0 * mixed[:, None]  # batches far apart
    idx, dist = integration.knn(apart, 90)
    assert integration.kbet_cells(idx[:, :50], mixed)[0].mean() == 0.0
    assert integration.ilisi_score(integration.lisi(idx, dist, mixed), 3)[0] < 0.01


def test_kbet_p_values_are_the_chi2_test_of_neighbour_batch_counts():
    idx = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [2, 3, 0, 1], [3, 2, 1, 0], [4, 0, 1, 2], [5, 4, 3, 2]])
    batches = np.array([0, 0, 1, 1, 0, 1])
    accepted, p = integration.kbet_cells(idx, batches, alpha=0.05)
    observed = np.array([[np.sum(batches[r] == b) for b in (0, 1)] for r in idx])
    for row, pv in zip(observed, p):
        assert pv == pytest.approx(stats.chisquare(row, [2.0, 2.0]).pvalue)
    np.testing.assert_array_equal(accepted, p >= 0.05)


def test_weighted_median_equals_median_of_the_repeated_values():
    rng = np.random.default_rng(4)
    values = rng.normal(size=9)
    weights = rng.integers(0, 3, size=(20, 9)).astype(float)
    got = integration._weighted_median(values, weights)
    for w, g in zip(weights, got):
        expected = np.median(np.repeat(values, w.astype(int))) if w.sum() else np.nan
        np.testing.assert_equal(g, expected)


scib = pytest.importorskip("scib_metrics", reason="scib-metrics is a test-only reference")


def _neighbours(x: np.ndarray, k: int):
    from scib_metrics.nearest_neighbors import NeighborsResults

    idx, dist = integration.knn(x, k)
    return idx, dist, NeighborsResults(indices=idx, distances=dist)


@pytest.mark.parametrize("seed", [5, 6])
def test_ilisi_and_lisi_match_scib_metrics(seed):
    x, _, batch = _data(seed)
    idx, dist, graph = _neighbours(x, 90)
    np.testing.assert_allclose(integration.lisi(idx, dist, batch), scib.lisi_knn(graph, batch), rtol=1e-5)
    ours = integration.ilisi_score(integration.lisi(idx, dist, batch), 3)[0]
    assert ours == pytest.approx(float(scib.ilisi_knn(graph, batch)), abs=1e-5)


@pytest.mark.parametrize("seed", [7, 8])
def test_kbet_acceptance_matches_scib_metrics(seed):
    x, _, batch = _data(seed, batch_shift=0.3)
    idx, _, graph = _neighbours(x, 50)
    acceptance, _, p_values = scib.kbet(graph, batch, alpha=0.05)
    accepted, ours_p = integration.kbet_cells(idx, batch, alpha=0.05)
    np.testing.assert_allclose(ours_p, p_values, atol=1e-5)  # scib: float32 regularised gamma
    assert accepted.mean() == pytest.approx(acceptance, abs=2 / len(x))  # at most a boundary cell or two


@pytest.mark.parametrize("seed", [9, 10])
def test_silhouette_batch_matches_scib_metrics(seed):
    x, labels, batch = _data(seed, n=400)
    ours = integration.silhouette_batch_score(integration.silhouette_batch_cells(x, labels, batch), labels)[0]
    assert ours == pytest.approx(float(scib.silhouette_batch(x, labels, batch)), abs=1e-5)
