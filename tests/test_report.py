"""Tests for lmc_jax.evaluate.report and figures: files written, metrics.json round-trips, tables, HTML and PCA."""

import json

import jax
import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from lmc_jax.evaluate import figures, report
from lmc_jax.evaluate.families import layout
from lmc_jax.evaluate.suite import MethodEmbeddings, evaluate_embeddings
from tests.tiny_config import default_settings

SITES = ["scanner_a", "scanner_b", "ihc"]


def _method(seed: int, shift: float) -> MethodEmbeddings:
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], 20)
    train = rng.normal(size=(40, 5)) + 2.0 * y[:, None] * np.eye(5)[0]
    heldout = np.concatenate([rng.normal(size=(40, 5)) + 2.0 * y[:, None] * np.eye(5)[0] + s * shift for s in range(3)])
    sites = np.repeat(np.arange(3), 40)
    heldout_labels = np.tile(y, 3)
    heldout_labels[sites == 2] = 1  # the ihc site has one class: its AUC is undefined
    return MethodEmbeddings(train, y, heldout, heldout_labels, sites, train_groups=np.arange(40) % 8,
                            heldout_groups=np.tile(np.arange(40) % 8, 3) + 10)


@pytest.fixture(scope="module")
def methods():
    return {"lmc": _method(0, 0.1), "baseline": _method(1, 2.0)}


@pytest.fixture(scope="module")
def metrics(methods):
    settings = default_settings(bootstrap_replicates=50, protocol_folds=3, signature_folds=3, signature_lambdas=5,
                        signature_stability_rounds=0)
    return evaluate_embeddings(methods, site_names=SITES, source_site="scanner_a", key=jax.random.key(0),
                               settings=settings)


def _not_blank(path) -> np.ndarray:
    image = np.asarray(Image.open(path).convert("RGB"))
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 50  # points/lines in several colours
    return image


def test_write_report_writes_files_and_metrics_round_trip(tmp_path, methods, metrics):
    projections = {name: figures.Projection(figures.pca_2d(m.heldout), m.heldout_sites, m.heldout_labels)
                   for name, m in methods.items()}
    paths = report.write_report(metrics, tmp_path / "eval", projections=projections)
    assert set(paths) == {"metrics", "report", "html", "embeddings", "auc", "reliability", "signatures"}
    assert json.loads(paths["metrics"].read_text("utf-8")) == metrics
    text = paths["report"].read_text("utf-8")
    assert "scanner_a (source)" in text and "How to read this" in text
    assert text.count("| lmc |") >= 10 and text.count("| baseline |") >= 10  # summaries, site, protocol tables
    assert "- ihc / auc, balanced_accuracy: only one class (label 1) among 40 examples (all methods)" in text
    assert "- summary / mean_unseen_auc: mean over 1 of 2; undefined at ihc (all methods)" in text
    assert f"{metrics['methods']['baseline']['per_site']['ihc']['fd']:#.3g}" in text
    assert all(f"({name}.png)" in text for name in ("embeddings", "auc", "reliability", "signatures"))
    page = paths["html"].read_text("utf-8")
    assert page.count('src="data:image/png;base64,') == 4 and page.count("<table>") >= 10
    assert "<td>lmc</td>" in page and "<b>How to read this.</b>" in page
    image = _not_blank(paths["embeddings"])
    assert image.shape[0] > 800 and image.shape[1] > 1000  # two methods stacked; by site | by label side by side
    for name in ("auc", "reliability", "signatures"):
        _not_blank(paths[name])


def test_report_without_projections_has_no_embedding_png(tmp_path, metrics):
    paths = report.write_report(metrics, tmp_path)
    assert "embeddings" not in paths and not (tmp_path / "embeddings.png").exists()
    assert "embeddings.png" not in paths["report"].read_text("utf-8")


def test_format_table_has_one_row_per_method_and_three_significant_digits(metrics):
    table = report.format_table(metrics).splitlines()
    assert len(table) == 2 + len(metrics["methods"])
    assert "mean unseen FD" in table[0] and "AUC drop" in table[0]
    assert "top-1" not in table[0]  # no tile ids anywhere: column dropped
    fd = metrics["methods"]["lmc"]["summary"]["mean_unseen_fd"]
    assert table[2].startswith("| lmc |") and f"{fd:#.3g}" in table[2]
    assert layout.fmt(0.0037) == "0.00370" and layout.fmt(25.71) == "25.7" and layout.fmt(None) == "n/a"


def test_pca_2d_matches_sklearn_up_to_sign():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(100, 6)) @ rng.normal(size=(6, 6)) + 4.0
    ours = figures.pca_2d(x)
    ref = PCA(n_components=2).fit_transform(x)
    np.testing.assert_allclose(np.abs(ours), np.abs(ref), atol=1e-8)
    assert ours[:, 0].var() >= ours[:, 1].var()
    one_dim = figures.pca_2d(x[:, :1])
    assert one_dim.shape == (100, 2) and np.all(one_dim[:, 1] == 0)
