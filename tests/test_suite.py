"""Tests for lmc_jax.evaluate.suite on synthetic embeddings with known site structure."""

import dataclasses
import json

import jax
import numpy as np
import pytest

from lmc_jax.evaluate.families import FAMILIES
from lmc_jax.evaluate.suite import MethodEmbeddings, evaluate_embeddings
from tests.tiny_config import default_settings

SITES = ["src", "b", "c"]
PER_SITE = tuple(k for f in FAMILIES if not f.optional for k in f.per_site_keys())  # every method's per-site keys
D = 8
FAST = default_settings(bootstrap_replicates=60, protocol_folds=3, signature_folds=3, signature_lambdas=6,
                signature_stability_rounds=2)


def _method(seed: int, site_shift: float, *, per_site: int = 60, collapse: bool = False) -> MethodEmbeddings:
    """Held-out tiles rendered at every site: a label direction plus noise, shifted by site_shift × site index."""
    rng = np.random.default_rng(seed)

    def embed(n):
        y = rng.integers(0, 2, size=n)
        y[:2] = [0, 1]
        x = rng.normal(size=(n, D))
        x[:, 0] += 2.5 * y
        return x, y

    train, train_y = embed(150)
    base, y = embed(per_site)
    shift = np.zeros(D)
    shift[1:3] = site_shift
    heldout = np.concatenate([base + 0.2 * rng.normal(size=base.shape) + s * shift for s in range(len(SITES))])
    if collapse:
        train = 3.0 + 1e-6 * rng.normal(size=train.shape)
        heldout = 3.0 + 1e-6 * rng.normal(size=heldout.shape)
    return MethodEmbeddings(
        train=train, train_labels=train_y, heldout=heldout, heldout_labels=np.tile(y, len(SITES)),
        heldout_sites=np.repeat(np.arange(len(SITES)), per_site), heldout_tile_ids=np.tile(np.arange(per_site), 3),
        train_groups=np.arange(len(train)) % 10, heldout_groups=100 + np.tile(np.arange(per_site) % 12, 3))


def _evaluate(methods, settings=FAST, **kwargs):
    return evaluate_embeddings(methods, site_names=SITES, source_site="src", key=jax.random.key(0),
                               settings=settings, **kwargs)


@pytest.fixture(scope="module")
def metrics():
    return _evaluate({"good": _method(0, 0.05), "bad": _method(0, 1.5), "collapsed": _method(0, 0.0, collapse=True)})


def test_good_method_beats_bad_on_every_separation_metric(metrics):
    good, bad = metrics["methods"]["good"], metrics["methods"]["bad"]
    for site in ("b", "c"):
        for key in ("fd", "fd_class", "sliced_w2"):
            assert good["per_site"][site][key] < bad["per_site"][site][key], (site, key)
    assert bad["per_site"]["b"]["fd"] < bad["per_site"]["c"]["fd"]  # site c is shifted twice as far
    assert good["summary"]["mean_unseen_fd"] < 0.2 * bad["summary"]["mean_unseen_fd"]
    assert good["summary"]["mean_unseen_top1"] > bad["summary"]["mean_unseen_top1"]
    assert good["summary"]["mean_unseen_fd"] == pytest.approx(
        np.mean([good["per_site"][s]["fd"] for s in ("b", "c")]))


def test_auc_summary_and_source_row(metrics):
    good = metrics["methods"]["good"]
    summary = good["summary"]
    assert summary["source_auc"] == good["per_site"]["src"]["auc"] > 0.85
    assert summary["auc_drop"] == pytest.approx(summary["source_auc"] - summary["mean_unseen_auc"])
    assert good["per_site"]["src"]["fd"] is None
    assert "reference site" in good["per_site"]["src"]["undefined"]["fd"]
    assert good["per_site"]["b"]["n"] == 60


def test_collapsed_encoder_is_exposed_by_auc_not_hidden_by_fd(metrics):
    good, collapsed = metrics["methods"]["good"], metrics["methods"]["collapsed"]
    # Standardisation removes the raw-scale "advantage" (raw FD ~1e-12) ...
    assert collapsed["summary"]["mean_unseen_fd_raw"] < 1e-6 * good["summary"]["mean_unseen_fd_raw"]
    assert collapsed["summary"]["mean_unseen_fd"] > 0.2 * good["summary"]["mean_unseen_fd"]
    # ... and the probe shows the label is gone: chance level (0.5 ± ~0.075 for 60 examples per site).
    assert collapsed["summary"]["source_auc"] < 0.75 and collapsed["summary"]["mean_unseen_auc"] < 0.75
    assert good["summary"]["source_auc"] - collapsed["summary"]["source_auc"] > 0.2


def test_metrics_are_json_serialisable_without_nan(metrics):
    text = json.dumps(metrics, allow_nan=False)
    assert json.loads(text) == metrics
    assert metrics["schema_version"] == 2 and metrics["sites"] == SITES
    assert set(metrics["notes"]) >= set(PER_SITE) | {"auc_drop", "intervals"}
    assert metrics["settings"]["bootstrap_replicates"] == 60 and metrics["bootstrap"]["unit"] == "group"


def test_small_and_single_class_sites_are_undefined_with_reasons():
    m = _method(1, 0.5)
    sites, labels = m.heldout_sites.copy(), m.heldout_labels.copy()
    keep = ~((sites == 2) & (np.arange(len(sites)) % 60 >= 5))  # site c keeps only 5 examples
    labels[sites == 1] = 1  # site b has a single class
    m = dataclasses.replace(m, heldout=m.heldout[keep], heldout_labels=labels[keep], heldout_sites=sites[keep],
                            heldout_tile_ids=m.heldout_tile_ids[keep], heldout_groups=m.heldout_groups[keep])
    result = _evaluate({"m": m})["methods"]["m"]
    b, c = result["per_site"]["b"], result["per_site"]["c"]
    assert b["auc"] is None and "one class" in b["undefined"]["auc"]
    assert b["fd"] is not None
    assert c["n"] == 5 and c["fd"] is None and c["auc"] is None
    assert "min_site_samples=10" in c["undefined"]["fd"]
    assert result["summary"]["mean_unseen_auc"] is None
    assert "undefined at every one (b, c)" in result["summary"]["undefined"]["mean_unseen_auc"]
    assert result["summary"]["mean_unseen_fd"] == pytest.approx(b["fd"])
    assert "mean over 1 of 2; undefined at c" in result["summary"]["partial"]["mean_unseen_fd"]
    assert result["summary"]["auc_drop"] is None
    assert c["kbet"] is None and "min_site_samples" in c["undefined"]["kbet"]  # left out of the joint mixing set
    assert b["brier"] is not None  # one class: Brier and ECE stay defined


def test_single_class_train_set_leaves_auc_undefined_everywhere():
    m = _method(2, 0.5)
    m = dataclasses.replace(m, train_labels=np.zeros_like(m.train_labels))
    per_site = _evaluate({"m": m})["methods"]["m"]["per_site"]
    assert all(v["auc"] is None and "probe not fit" in v["undefined"]["auc"] for v in per_site.values())


def test_without_tile_ids_top1_is_undefined():
    m = dataclasses.replace(_method(3, 0.5), heldout_tile_ids=None)
    summary = _evaluate({"m": m})["methods"]["m"]["summary"]
    assert summary["mean_unseen_top1"] is None and summary["mean_unseen_fd"] is not None


def test_nan_embeddings_raise_naming_the_method():
    m = _method(4, 0.5)
    heldout = m.heldout.copy()
    heldout[7, 3] = np.inf
    with pytest.raises(ValueError, match="'broken'.*heldout.*NaN or inf"):
        _evaluate({"fine": _method(5, 0.5), "broken": dataclasses.replace(m, heldout=heldout)})


def test_bad_arguments_raise():
    m = _method(6, 0.5)
    with pytest.raises(ValueError, match="source_site 'x'"):
        evaluate_embeddings({"m": m}, site_names=SITES, source_site="x", key=jax.random.key(0), settings=FAST)
    with pytest.raises(ValueError, match="heldout_sites must index"):
        _evaluate({"m": dataclasses.replace(m, heldout_sites=m.heldout_sites + 1)})
    with pytest.raises(ValueError, match="'m': heldout_labels must be binary"):
        _evaluate({"m": dataclasses.replace(m, heldout_labels=m.heldout_labels * 2)})
    with pytest.raises(ValueError, match="train_labels must have shape"):
        _evaluate({"m": dataclasses.replace(m, train_labels=m.train_labels[:-1])})
    with pytest.raises(ValueError, match="heldout_groups must have shape"):
        _evaluate({"m": dataclasses.replace(m, heldout_groups=m.heldout_groups[:3])})


def test_summary_exclude_keeps_site_in_table_but_out_of_means():
    m = _method(0, 3.0)
    full = _evaluate({"m": m})["methods"]["m"]
    excluded = _evaluate({"m": m}, summary_exclude=("c",))["methods"]["m"]
    assert excluded["per_site"]["c"]["fd"] == pytest.approx(full["per_site"]["c"]["fd"])
    kept = [s for s in full["per_site"] if s not in ("src", "c")]
    expected = np.mean([full["per_site"][s]["fd"] for s in kept])
    assert excluded["summary"]["mean_unseen_fd"] == pytest.approx(expected)
    assert excluded["summary"]["mean_unseen_fd"] != pytest.approx(full["summary"]["mean_unseen_fd"])


def test_every_interval_brackets_its_value(metrics):
    checked = 0
    for method in metrics["methods"].values():
        for entry in [*method["per_site"].values(), method["summary"]]:
            for key, (lo, hi) in entry["ci"].items():
                assert lo <= entry[key] + 1e-12 and entry[key] <= hi + 1e-12, key
                checked += 1
    assert checked > 100


def test_probe_threshold_never_sees_target_labels():
    m = _method(7, 0.5)
    other = dataclasses.replace(m, heldout_labels=np.where(m.heldout_sites == 0, m.heldout_labels,
                                                           1 - m.heldout_labels))
    a, b = (_evaluate({"m": x})["methods"]["m"] for x in (m, other))
    assert a["probe"]["threshold"] == b["probe"]["threshold"]  # picked on source validation only
    for key in ("auc", "f1", "brier"):
        assert a["per_site"]["src"][key] == b["per_site"]["src"][key]
    assert a["per_site"]["b"]["auc"] == pytest.approx(1 - b["per_site"]["b"]["auc"])  # the targets did change


def test_sites_from_one_distribution_mix_and_separated_sites_do_not():
    rng = np.random.default_rng(8)
    y = rng.integers(0, 2, 600)
    x = rng.normal(size=(600, D)) + 2.0 * y[:, None] * np.eye(D)[0]
    sites = np.repeat(np.arange(3), 200)
    mixed = MethodEmbeddings(x[:150], y[:150], x, y, sites)
    apart = MethodEmbeddings(x[:150], y[:150], x + 6.0 * sites[:, None] * np.eye(D)[1], y, sites)
    result = _evaluate({"mixed": mixed, "apart": apart})["methods"]
    same, far = result["mixed"]["summary"], result["apart"]["summary"]
    assert same["kbet"] > 0.85 and same["ilisi"] > 0.75 and same["silhouette_batch"] > 0.9
    assert far["kbet"] < 0.05 and far["ilisi"] < 0.05
    assert same["mean_unseen_fd"] < 0.05 and abs(same["mean_unseen_mmd"]) < 0.02 < far["mean_unseen_mmd"]
    assert result["mixed"]["protocols"]["cross_site"]["undefined"].startswith("no group key")


def test_signature_and_protocols_are_reported(metrics):
    good = metrics["methods"]["good"]
    assert 0 in good["signature"]["dims"]  # the label lives in dimension 0
    lodo = good["protocols"]["leave_one_domain_out"]
    assert set(lodo["per_domain"]) == set(SITES) and lodo["summary"]["mean_auc"] > 0.8
    assert good["protocols"]["cross_site"]["source"] == "src"


def test_constant_embeddings_give_reasons_not_crashes_or_nan():
    y = np.random.default_rng(9).integers(0, 2, 300)
    sites = np.repeat(np.arange(3), 100)
    collapsed = MethodEmbeddings(np.ones((100, 4)), y[:100], np.ones((300, 4)), y, sites)
    result = _evaluate({"collapsed": collapsed})
    json.dumps(result, allow_nan=False)
    b = result["methods"]["collapsed"]["per_site"]["b"]
    assert b["fd"] is None and "collapsed encoder" in b["undefined"]["fd"]
    assert b["auc"] == 0.5  # the probe still runs: constant scores rank every pair as a tie
    assert "every dimension is constant" in result["methods"]["collapsed"]["signature"]["undefined"]


def test_empty_and_single_example_sites_are_reported_as_undefined():
    m = _method(10, 0.5)
    keep = (m.heldout_sites != 2) | (np.arange(len(m.heldout_sites)) == len(m.heldout_sites) - 1)  # c: one row
    m = dataclasses.replace(m, heldout=m.heldout[keep], heldout_labels=m.heldout_labels[keep],
                            heldout_sites=m.heldout_sites[keep], heldout_tile_ids=m.heldout_tile_ids[keep],
                            heldout_groups=m.heldout_groups[keep])
    result = evaluate_embeddings({"m": m}, site_names=[*SITES, "empty"], source_site="src", key=jax.random.key(0),
                                 settings=FAST)
    json.dumps(result, allow_nan=False)
    per_site = result["methods"]["m"]["per_site"]
    assert per_site["c"]["n"] == 1 and per_site["empty"]["n"] == 0
    for site in ("c", "empty"):
        assert all(per_site[site][k] is None for k in PER_SITE)
        assert "min_site_samples" in per_site[site]["undefined"]["auc"]
    assert per_site["b"]["fd"] is not None
