"""Tests for lmc_jax.evaluate.lomo: source-validation threshold, patient bootstrap, matched-AUC signatures,
cross-fold Jaccard, the multinomial domain probe, and the tables / figure / report of a simulated LOMO study."""

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from lmc_jax.evaluate import lomo
from lmc_jax.evaluate.kernels.calibration import f1_threshold
from lmc_jax.evaluate.kernels import multinomial

FAST = lomo.LomoSettings(replicates=200)
MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
MODELS = ("baseline", "DCGAN", "domain-general", "LMC")


def test_threshold_is_chosen_on_source_validation_not_on_test():
    y_val, p_val = np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.9])  # F1-optimal on validation: 0.3
    y, p = np.array([1, 0, 1, 1]), np.array([0.25, 0.35, 0.6, 0.8])  # F1-optimal on test: 0.25 (F1 6/7)
    assert f1_threshold(y, p) == 0.25  # the two splits disagree
    fold = lomo.FoldInputs("40X", y, p, np.array(["a", "b", "c", "d"]), y_val, p_val, np.array(["e", "f", "g", "h"]))
    r = lomo.fold_result(fold, FAST)
    assert r["threshold"] == 0.3 and r["threshold_note"] is None
    m = r["metrics"]
    assert m["f1"] == pytest.approx(2 * 2 / (3 + 3))  # p ≥ 0.3 → predictions 0,1,1,1: tp 2, predicted 3, positives 3
    assert m["balanced_accuracy"] == pytest.approx(0.5 * (2 / 3 + 0 / 1))
    assert m["brier"] == pytest.approx((0.75**2 + 0.35**2 + 0.4**2 + 0.2**2) / 4)
    assert m["auc"] == pytest.approx(2 / 3)  # 0.6 and 0.8 beat the negative 0.35; 0.25 does not
    one_class = lomo.fold_result(fold._replace(y_val=np.ones(4, int)), FAST)
    assert one_class["threshold"] == 0.5 and "one class" in one_class["threshold_note"]
    assert one_class["metrics"]["f1"] == pytest.approx(2 * 2 / (2 + 3))  # p ≥ 0.5: rows 3, 4
    with pytest.raises(ValueError, match=r"\.p has 3 rows but y has 4"):
        lomo.fold_result(fold._replace(p=p[:3]), FAST)


def _patient_fold(patients, y, p):
    return lomo.FoldInputs("100X", y, p, patients, y, p, patients)


def test_bootstrap_resamples_whole_patients():
    rng = np.random.default_rng(0)
    patients = np.repeat(list("ABCDEF"), 20)
    y = (patients == "A").astype(int)  # one patient holds every positive row
    p = np.clip(0.3 + 0.4 * y + rng.normal(0, 0.2, len(y)), 0, 1)
    by_patient = lomo.fold_result(_patient_fold(patients, y, p), FAST)["metrics"]
    by_row = lomo.fold_result(_patient_fold(np.arange(len(y)), y, p), FAST)["metrics"]
    assert by_patient["auc"] == pytest.approx(by_row["auc"])  # same point value
    # ~1/3 of patient resamples miss patient A (no positives): AUC undefined there, so no interval ...
    assert "auc" not in by_patient["ci"] and "replicates defined" in by_patient["no_ci"]["auc"]
    assert "auc" in by_row["ci"]  # ... while resampling rows nearly always draws positives
    # Rows of a patient move together: duplicating every row within its patient changes neither value nor interval.
    twice = lomo.fold_result(_patient_fold(np.repeat(patients, 2), np.repeat(y, 2), np.repeat(p, 2)), FAST)["metrics"]
    for metric in ("brier", "ece", "f1"):
        assert twice[metric] == pytest.approx(by_patient[metric])
        np.testing.assert_allclose(twice["ci"][metric], by_patient["ci"][metric], atol=1e-9)
    rows_twice = lomo.fold_result(_patient_fold(np.arange(2 * len(y)), np.repeat(y, 2), np.repeat(p, 2)), FAST)
    assert np.diff(rows_twice["metrics"]["ci"]["brier"])[0] < 0.85 * np.diff(by_row["ci"]["brier"])[0]  # ≈ 1/√2


def _signal(seed, informative, shift, n=800, d=50):
    """Gaussian features; `informative` dims shifted by ±shift (in noise units); dims rescaled and offset."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2 * n)
    x = rng.normal(size=(2 * n, d))
    x[:, informative] += shift * (2 * y[:, None] - 1)
    x = x * rng.uniform(0.5, 3.0, d) + rng.normal(0, 2, d)
    return x[:n], y[:n], x[n:], y[n:]


def test_signature_at_matched_auc_is_sparse_only_when_the_signal_is():
    x_fit, y_fit, x_val, y_val = _signal(0, [4, 17, 31], 0.6)
    sparse = lomo.matched_signature(x_fit, y_fit, x_val, y_val, tolerance=0.005)
    assert {4, 17, 31} <= set(sparse["dims"]) and sparse["size"] == len(sparse["dims"]) <= 5
    assert sparse["matched_auc"] >= sparse["dense_auc"] - 0.005 and not sparse["undefined"]
    z_mean, z_std = x_fit.mean(0), x_fit.std(0)
    ref = LogisticRegression(C=1.0 / (1e-2 * len(y_fit)), tol=1e-10, max_iter=10_000).fit((x_fit - z_mean) / z_std, y_fit)
    assert sparse["dense_auc"] == pytest.approx(roc_auc_score(y_val, ref.decision_function((x_val - z_mean) / z_std)),
                                                abs=2e-3)
    x_fit, y_fit, x_val, y_val = _signal(101, list(range(50)), 0.12)  # every dimension carries a little signal
    dense = lomo.matched_signature(x_fit, y_fit, x_val, y_val, tolerance=0.005)
    assert dense["size"] >= 35 and dense["num_dims"] == 50
    impossible = lomo.matched_signature(x_fit, y_fit, x_val, y_val, tolerance=0.005, lambda_ratio=0.5)
    assert impossible["size"] is None and "no λ on the path" in impossible["undefined"]["size"]


def test_cross_fold_jaccard():
    same = lomo.cross_fold_jaccard({"100X": [1, 5, 9], "200X": {9, 5, 1}})
    assert same == {"100X vs 200X": 1.0}
    pairs = lomo.cross_fold_jaccard({"40X": [0, 1], "100X": [2, 3], "200X": [1, 2, 3], "400X": []})
    assert pairs["40X vs 100X"] == 0.0 and pairs["100X vs 200X"] == pytest.approx(2 / 3)
    assert pairs["40X vs 200X"] == pytest.approx(1 / 4) and pairs["40X vs 400X"] == 0.0
    assert len(pairs) == 6 and lomo.cross_fold_jaccard({"a": [], "b": []}) == {"a vs b": None}


def test_domain_probe_near_chance_without_domain_signal_and_near_one_with_it():
    rng = np.random.default_rng(3)  # fit on 120 rows of 8 dims (the study's compiled shape), score on 600
    d = np.array(MAGNIFICATIONS[1:])[rng.integers(0, 3, 720)]
    x = rng.normal(size=(720, 8))
    fit, test = slice(0, 120), slice(120, None)
    free = lomo.domain_probe(x[fit], d[fit], x[test], d[test])
    assert abs(free - lomo.chance_level(d[test])) < 0.1
    shifted = x + 4.0 * (d[:, None] == np.array(MAGNIFICATIONS[1:])).astype(float) @ np.eye(3, 8)
    assert lomo.domain_probe(shifted[fit], d[fit], shifted[test], d[test]) > 0.97
    assert lomo.chance_level(np.array(["a", "a", "a", "b"])) == 0.75
    # the multinomial optimum is scikit-learn's (all K classes penalised; intercepts up to a common shift)
    probe = multinomial.fit_multinomial(shifted[fit], d[fit], 1e-2)
    z = (shifted[fit] - shifted[fit].mean(0)) / shifted[fit].std(0)
    ref = LogisticRegression(C=1.0 / (1e-2 * 120), tol=1e-10, max_iter=10_000).fit(z, d[fit])
    assert list(ref.classes_) == list(probe.classes)
    np.testing.assert_allclose(probe.w, ref.coef_.T, atol=2e-4)
    np.testing.assert_allclose(probe.b - probe.b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=2e-4)


def test_retrieval_hits_rank_the_own_location_among_the_gallery():
    q = np.array([[1.0, 0.2], [0.0, 1.0], [1.0, 1.0]])
    g = np.array([[1.0, 0.1], [0.9, 0.0], [0.0, 2.0], [1.0, 1.0]])  # cosine: scale does not matter
    loc_g = np.array([7, 8, 9, 5])
    # query 0 (location 8): gallery 0 (7) is more similar than its own row → rank 1: a top-2 hit, not top-1;
    # query 1 (9): its own row is the nearest; query 2 (4): not in the gallery → NaN
    np.testing.assert_array_equal(lomo.retrieval_hits(q, [8, 9, 4], g, loc_g, 1), [0.0, 1.0, np.nan])
    np.testing.assert_array_equal(lomo.retrieval_hits(q, [8, 9, 4], g, loc_g, 2), [1.0, 1.0, np.nan])


def test_cross_magnification_retrieval_finds_aligned_sources_and_not_unrelated_ones():
    rng = np.random.default_rng(1)
    loc = np.arange(60)
    patients = np.repeat([f"P{i}" for i in range(6)], 10)
    place = rng.normal(size=(60, 16))  # one point per location
    x_test = place + rng.normal(0, 0.1, place.shape)
    aligned, unrelated = place + rng.normal(0, 0.1, place.shape), rng.normal(size=(60, 16))
    y = loc % 2
    fold = lomo.FoldInputs("4x", y, np.full(60, 0.5), patients, y, np.full(60, 0.5), patients, x_test=x_test,
                           loc_test=loc, x_gallery=np.concatenate([aligned, unrelated]),
                           loc_gallery=np.concatenate([loc, loc]), d_gallery=np.repeat(["1x", "2x"], 60))
    r = lomo.fold_result(fold, FAST)["retrieval"]
    assert r["per_source"]["1x"]["top_1"] == 1.0 and r["per_source"]["2x"]["top_1"] < 0.1
    assert r["top_1"] == pytest.approx((1.0 + r["per_source"]["2x"]["top_1"]) / 2)
    assert r["chance_1"] == pytest.approx(1 / 60) and r["chance_10"] == pytest.approx(10 / 60)
    lo, hi = r["ci"]["top_10"]
    assert lo <= r["top_10"] <= hi and r["top_10"] > r["chance_10"] + 0.3
    unpaired = lomo.fold_result(fold._replace(loc_test=None), FAST)["retrieval"]
    assert unpaired["top_1"] is None and "config.lomo.paired" in unpaired["undefined"]["top_1"]
    with pytest.raises(ValueError, match="loc_test has 59 rows"):
        lomo.fold_result(fold._replace(loc_test=loc[:59]), FAST)
    study = lomo.evaluate({"LMC": [fold, fold._replace(held_out="2x")]}, FAST)
    overall = study["models"]["LMC"]["overall"]["retrieval"]
    assert overall["mean_top_1"] == pytest.approx(r["top_1"]) and overall["mean_chance_10"] == pytest.approx(10 / 60)
    assert "same-location top-10 across magnifications" in lomo.table_markdown(study)


def _study(seed=0):
    """Simulated BreaKHis-like LOMO study: 20 patients (one label each), 4 magnifications, 4 models."""
    rng = np.random.default_rng(seed)
    names = np.array([f"P{i:02d}" for i in range(20)])
    label = np.arange(20) % 2
    split = np.array(["test"] * 8 + ["val"] * 6 + ["fit"] * 6)
    rows = [(pt, m) for pt in range(20) for m in range(4) for _ in range(6)]
    pt, mag = (np.array(a) for a in zip(*rows))
    y = label[pt]
    models = {}
    for j, model in enumerate(MODELS):
        x = rng.normal(size=(len(y), 8))
        x[:, :2] += (0.4 + 0.1 * j) * (2 * y[:, None] - 1) + rng.normal(0, 0.5, (20, 2))[pt]  # label + patient effect
        if model != "domain-general":
            x[:, 2] += 5.0 * mag  # magnification leaks into the features
        p = 1 / (1 + np.exp(-(x[:, 0] + x[:, 1])))
        folds = []
        for m, held in enumerate(MAGNIFICATIONS):
            test = (split[pt] == "test") & (mag == m)
            val, fit = (split[pt] == "val") & (mag != m), (split[pt] == "fit") & (mag != m)
            domains = np.array(MAGNIFICATIONS)[mag]
            folds.append(lomo.FoldInputs(
                held, y[test], p[test], names[pt[test]], y[val], p[val], names[pt[val]],
                x_test=x[test], x_val=x[val], x_fit=x[fit], y_fit=y[fit], patients_fit=names[pt[fit]],
                d_fit=None if model == "LMC" else domains[fit], d_val=None if model == "LMC" else domains[val],
                domain_head_accuracy=0.4 if model == "domain-general" else None))
        models[model] = folds
    return models


@pytest.fixture(scope="module")
def results():
    return lomo.evaluate(_study(), FAST)


def test_overall_summarises_the_folds_with_pooled_intervals(results):
    assert results["order"] == list(MODELS) and results["folds"] == list(MAGNIFICATIONS)
    for model in MODELS:
        folds, overall = results["models"][model]["folds"], results["models"][model]["overall"]
        aucs = [folds[m]["metrics"]["auc"] for m in MAGNIFICATIONS]
        briers = [folds[m]["metrics"]["brier"] for m in MAGNIFICATIONS]
        assert overall["mean_auc"] == pytest.approx(np.mean(aucs)) and overall["worst_auc"] == pytest.approx(min(aucs))
        assert overall["worst_brier"] == pytest.approx(max(briers))
        lo, hi = overall["ci"]["mean_auc"]
        assert lo <= overall["mean_auc"] <= hi
        assert folds["40X"]["n"] == {"test": 48, "test_patients": 8, "val": 108, "val_patients": 6, "fit": 108,
                                     "fit_patients": 6}
        sizes = [folds[m]["signature"]["size"] for m in MAGNIFICATIONS]
        assert overall["signature_size"]["mean"] == pytest.approx(np.mean(sizes))
        assert set(overall["jaccard"]["pairs"]) == {f"{a} vs {b}" for i, a in enumerate(MAGNIFICATIONS)
                                                   for b in MAGNIFICATIONS[i + 1:]}
    leaky = results["models"]["baseline"]["overall"]["domain"]["mean_probe_accuracy"]
    general = results["models"]["domain-general"]["overall"]["domain"]
    assert leaky > 0.9 and general["mean_probe_accuracy"] < general["mean_chance"] + 0.15
    assert general["mean_head_accuracy"] == pytest.approx(0.4)
    assert "not given" in results["models"]["LMC"]["folds"]["40X"]["domain"]["undefined"]["probe_accuracy"]


def test_pooled_bootstrap_resamples_the_same_patients_in_every_fold():
    rng = np.random.default_rng(5)
    patients = np.repeat([f"P{i}" for i in range(12)], 10)
    y = np.repeat(np.arange(12) % 2, 10)
    p = np.clip(0.5 + 0.25 * (2 * y - 1) + rng.normal(0, 0.25, 120), 0, 1)
    fold = lomo.FoldInputs("40X", y, p, patients, y, p, patients)
    same = lomo.model_result([fold, fold._replace(held_out="100X")], FAST)
    # identical folds on the same patients: every replicate's mean equals that replicate's fold value
    for metric in ("auc", "brier", "f1"):
        np.testing.assert_allclose(same["overall"]["ci"][f"mean_{metric}"], same["folds"]["40X"]["metrics"]["ci"][metric])
    other = lomo.model_result([fold, fold._replace(held_out="100X", patients=np.char.add("Q", patients))], FAST)
    width = {k: np.diff(v)[0] for k, v in (("mean", other["overall"]["ci"]["mean_brier"]),
                                           ("fold", other["folds"]["40X"]["metrics"]["ci"]["brier"]))}
    assert width["mean"] < 0.9 * width["fold"]  # disjoint patients resample independently: ≈ 1/√2 as wide


def test_table_has_every_model_and_fold_and_explains_undefined_values(results):
    text = lomo.table_markdown(results)
    assert "nan" not in text.lower()
    for name in MODELS + MAGNIFICATIONS:
        assert name in text
    assert text.count("## Held out: ") == 4
    first = text.split("## Worst")[0]
    assert [first.index(f"| {m} |") for m in MODELS] == sorted(first.index(f"| {m} |") for m in MODELS)
    row = next(line for line in first.splitlines() if line.startswith("| LMC |"))
    assert row.count(" [0.") >= 5  # "0.930 [0.900, 0.950]" style intervals on the five metrics
    mark = row.split("n/a")[1].split("]")[0] + "]"  # LMC has no domain labels: its domain cell is n/a[^k]
    footnote = next(line for line in text.splitlines() if line.startswith(f"{mark}: "))
    assert "not given: d_fit, d_val" in footnote
    assert "same-location" not in text  # no model's data pairs tiles across magnifications: no retrieval columns


def test_plot_and_report_are_written_whole(results, tmp_path):
    paths = lomo.write_report(results, tmp_path / "eval")  # lomo.png comes from lomo.plot
    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(results))
    assert paths["md"].read_text().startswith("# Leave-one-magnification-out") and "lomo.png" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and len(paths["png"].read_bytes()) > 20_000
    before = {k: p.read_bytes() for k, p in paths.items()}
    broken = json.loads(json.dumps(results))
    broken["models"]["LMC"]["folds"]["40X"]["metrics"]["auc"] = float("nan")  # not valid JSON
    with pytest.raises(ValueError):
        lomo.write_report(broken, tmp_path / "eval")
    assert {k: p.read_bytes() for k, p in paths.items()} == before  # the old report stays whole
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["lomo.json", "lomo.md", "lomo.png"]
