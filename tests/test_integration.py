"""Tests for lmc_jax.evaluate.kernels.integration: exact kNN vs scikit-learn, silhouette vs scikit-learn, and
silhouette-batch / iLISI / kBET vs scib-metrics' values on the same inputs, stored once in
tests/golden/scib_metrics.npz by tests/golden/make_scib_golden.py (scib-metrics itself is not installed for tests)."""

import hashlib
import pathlib

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import silhouette_samples
from sklearn.neighbors import NearestNeighbors

from lmc_jax.evaluate.kernels import integration

GOLDEN = pathlib.Path(__file__).parent / "golden" / "scib_metrics.npz"
ILISI_SEEDS, KBET_SEEDS, SILHOUETTE_SEEDS = (5, 6), (7, 8), (9, 10)


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


def digest(*arrays: np.ndarray) -> str:
    """Short SHA-256 of the arrays' dtypes, shapes and bytes: ties a golden value to the inputs it was made from."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def _golden(name: str, *inputs: np.ndarray) -> dict[str, np.ndarray]:
    with np.load(GOLDEN) as g:
        golden = {k: g[k] for k in g.files}
    assert str(golden[f"{name}_inputs"]) == digest(*inputs), (
        f"test inputs of {name} changed since {GOLDEN.name} was made: python tests/golden/make_scib_golden.py"
    )
    return golden


@pytest.mark.parametrize("seed", ILISI_SEEDS)
def test_ilisi_and_lisi_match_scib_metrics(seed):
    x, _, batch = _data(seed)
    golden = _golden(f"lisi_{seed}", x, batch)
    idx, dist = integration.knn(x, 90)
    np.testing.assert_allclose(integration.lisi(idx, dist, batch), golden[f"lisi_{seed}"], rtol=1e-5)
    ours = integration.ilisi_score(integration.lisi(idx, dist, batch), 3)[0]
    assert ours == pytest.approx(float(golden[f"ilisi_{seed}"]), abs=1e-5)


@pytest.mark.parametrize("seed", KBET_SEEDS)
def test_kbet_acceptance_matches_scib_metrics(seed):
    x, _, batch = _data(seed, batch_shift=0.3)
    golden = _golden(f"kbet_{seed}", x, batch)
    idx, _ = integration.knn(x, 50)
    accepted, ours_p = integration.kbet_cells(idx, batch, alpha=0.05)
    np.testing.assert_allclose(ours_p, golden[f"kbet_p_{seed}"], atol=1e-5)  # scib: float32 regularised gamma
    acceptance = float(golden[f"kbet_acceptance_{seed}"])
    assert accepted.mean() == pytest.approx(acceptance, abs=2 / len(x))  # at most a boundary cell or two


@pytest.mark.parametrize("seed", SILHOUETTE_SEEDS)
def test_silhouette_batch_matches_scib_metrics(seed):
    x, labels, batch = _data(seed, n=400)
    golden = _golden(f"silhouette_batch_{seed}", x, labels, batch)
    ours = integration.silhouette_batch_score(integration.silhouette_batch_cells(x, labels, batch), labels)[0]
    assert ours == pytest.approx(float(golden[f"silhouette_batch_{seed}"]), abs=1e-5)


def _brute_force(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 distance matrix, each row sorted by (distance, index)."""
    d = np.sqrt(((x[:, None, :].astype(np.float64) - x[None, :, :]) ** 2).sum(-1))
    order = np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_blocked_exact_knn_equals_brute_force_with_ties(monkeypatch):
    rng = np.random.default_rng(11)
    x = rng.normal(size=(900, 5)).astype(np.float32)
    x[600:606] = x[3]  # seven identical rows: exact distance ties
    monkeypatch.setattr(integration, "_REF_BLOCK", 256)  # 4 reference blocks, the last one padded
    idx, dist = integration.knn(x, 12)
    ref_idx, ref_dist = _brute_force(x, 12)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    assert (idx == ref_idx).mean() > 0.999  # Gram-trick round-off may swap neighbours within 1e-6
    tied = [3, 600, 601, 602, 603, 604, 605]
    for row in tied:  # the 7 duplicates (distance 0) are each other's first 7 neighbours
        assert sorted(idx[row, :7]) == tied and np.all(dist[row, :7] == 0)
    sub_idx, sub_dist = integration.knn(x, 12, rows=np.array([5, 700]))
    np.testing.assert_array_equal(sub_idx, idx[[5, 700]])
    np.testing.assert_array_equal(sub_dist, dist[[5, 700]])


def test_ivf_knn_with_every_list_probed_is_exact():
    x, _, _ = _data(12, n=800)
    idx, dist = integration.knn(x, 20)
    ivf_idx, ivf_dist = integration.ivf_knn(x, 20, lists=16, probes=16)
    np.testing.assert_allclose(ivf_dist, dist, atol=1e-5)
    assert (ivf_idx == idx).mean() > 0.999


def test_ivf_knn_graph_recall_on_clustered_embeddings():
    rng = np.random.default_rng(13)
    centres = 4.0 * rng.normal(size=(100, 24))
    x = (centres[rng.integers(0, 100, 6000)] + rng.normal(size=(6000, 24))).astype(np.float32)
    idx, dist, info = integration.knn_graph(x, 15, exact_max_rows=5000, probes=4)
    assert info["method"] == "ivf" and info["lists"] == 16 and info["recall_queries"] == 500  # 6000 / 384 cells
    assert info["components"] == 24 and info["recall_at_k_full_dims"] == info["recall_at_k"]  # 24 dims < 50
    exact, exact_dist = integration.knn(x, 15)
    direct = np.mean([len(np.intersect1d(a, b)) / 15 for a, b in zip(exact, idx)])
    assert info["recall_at_k"] >= 0.95 and abs(info["recall_at_k"] - direct) < 0.03
    assert (idx[:, 0] == np.arange(len(x))).all() and np.all(np.diff(dist, axis=1) >= 0) and not dist[:, 0].any()
    found = idx == exact  # where the neighbour is the exact one, so is its (Gram-trick) distance
    np.testing.assert_allclose(dist[found], exact_dist[found], atol=1e-4)
    assert integration.knn_graph(x[:400], 15)[2] == {"method": "exact"}


def test_knn_graph_above_exact_max_rows_is_the_principal_components_graph():
    rng = np.random.default_rng(16)
    basis = np.linalg.qr(rng.normal(size=(64, 8)))[0].T  # clusters in an 8-dim subspace of 64, small noise
    x = ((4.0 * rng.normal(size=(60, 8)))[rng.integers(0, 60, 4000)] + rng.normal(size=(4000, 8))) @ basis
    x = (x + 0.05 * rng.normal(size=x.shape)).astype(np.float32)
    idx, dist, info = integration.knn_graph(x, 15, exact_max_rows=3000)
    assert info["components"] == integration.GRAPH_COMPONENTS == 50 and info["lists"] == 10
    y = integration.pca_projection(x - x.mean(0), 50)
    exact, exact_dist = integration.knn(y, 15)
    assert np.mean([len(np.intersect1d(a, b)) / 15 for a, b in zip(exact, idx)]) >= 0.95 <= info["recall_at_k"]
    assert 0.5 < info["recall_at_k_full_dims"] <= 1.0  # the projection drops 14 noise dims: most neighbours stay
    found = idx == exact
    np.testing.assert_allclose(dist[found], exact_dist[found], atol=1e-3)


def test_pca_projection_keeps_the_leading_subspace():
    rng = np.random.default_rng(15)
    x = rng.normal(size=(3000, 6)) @ np.diag([5.0, 4.0, 3.0, 0.1, 0.1, 0.1]) @ np.linalg.qr(rng.normal(size=(6, 6)))[0]
    x = (x - x.mean(0)).astype(np.float32)
    y = integration.pca_projection(x, 3)
    _, _, vt = np.linalg.svd(x.astype(np.float64), full_matrices=False)
    expected = x.astype(np.float64) @ vt[:3].T  # the same coordinates up to each axis's sign
    np.testing.assert_allclose(np.abs(y), np.abs(expected), atol=1e-3)
    assert integration.pca_projection(x, 6) is x


def test_silhouette_by_reference_sample_estimates_the_exact_scores(monkeypatch):
    x, labels, batch = _data(14, n=3000)
    exact = integration.silhouette_batch_cells(x, labels, batch)
    monkeypatch.setattr(integration, "SILHOUETTE_REFERENCE", 300)
    approx = integration.silhouette_batch_cells(x, labels, batch, exact_max_rows=1000)
    assert np.corrcoef(exact, approx)[0, 1] > 0.95
    score = integration.silhouette_batch_score(exact, labels)[0]
    assert integration.silhouette_batch_score(approx, labels)[0] == pytest.approx(score, abs=0.01)
