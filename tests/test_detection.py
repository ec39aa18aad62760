"""Tests for lmc_jax.evaluate.kernels.detection and its wiring into suite, pipeline and report (MIDOG replica end to end)."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from lmc_jax.evaluate import pipeline
from lmc_jax.evaluate.kernels import detection
from lmc_jax.evaluate.suite import MethodEmbeddings, evaluate_embeddings
from lmc_jax.methods import RAW_COLOUR, raw_colour_features
from tests.test_builder_midog import make_painted_replica
from tests.tiny_config import default_settings, tiny_config

R = 30.0


def _reference_match(pred, scores, truth, radius):
    """The rule spelled out with plain loops: by descending score (stable), the nearest free truth within radius."""
    taken, tp = set(), 0
    for i in sorted(range(len(pred)), key=lambda i: -scores[i]):
        best = None
        for j in range(len(truth)):
            d = float(np.sqrt(np.sum((pred[i] - truth[j]) ** 2)))
            if j not in taken and d <= radius and (best is None or d < best[0]):
                best = (d, j)
        if best is not None:
            taken.add(best[1])
            tp += 1
    return tp, len(pred) - tp, len(truth) - tp


def _challenge_match(pred, truth, radius):
    """evalutils.score_detection's rule (MIDOG): truths in order, each takes its nearest unclaimed prediction."""
    claimed, tp = set(), 0
    for t in truth:
        d = np.sqrt(np.sum((pred - t) ** 2, axis=1)) if len(pred) else np.zeros(0)
        free = [i for i in np.argsort(d, kind="stable") if d[i] <= radius and i not in claimed]
        if free:
            claimed.add(free[0])
            tp += 1
    return tp, len(pred) - tp, len(truth) - tp


def _cloud(rng, n_pred, n_truth, size=150.0):
    return rng.uniform(0, size, (n_pred, 2)), rng.random(n_pred), rng.uniform(0, size, (n_truth, 2))


def test_match_points_equals_the_reference_and_is_one_to_one():
    rng = np.random.default_rng(0)
    contested = 0
    for _ in range(300):
        pred, scores, truth = _cloud(rng, rng.integers(0, 12), rng.integers(0, 12))
        tp, fp, fn = detection.match_points(pred, scores, truth, R)
        assert (tp, fp, fn) == _reference_match(pred, scores, truth, R)
        assert tp + fp == len(pred) and tp + fn == len(truth)
        within = np.sqrt(((pred[:, None] - truth[None]) ** 2).sum(-1)) <= R if len(pred) and len(truth) else None
        if within is not None and within.any():
            optimum = int(np.sum(maximum_bipartite_matching(csr_matrix(within), perm_type="column") >= 0))
            assert optimum / 2 <= tp <= optimum  # a maximal matching: at least half the optimal one
            contested += int((within.sum(0) > 1).any() and (within.sum(1) > 1).any())
        match = detection.greedy_match(pred, scores, truth, R)
        assert len(set(match[match >= 0])) == tp  # each truth at most once
    assert contested > 20  # the draws did exercise competing matches


def test_agrees_with_the_challenge_rule_when_no_match_is_contested():
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(300):
        pred, scores, truth = _cloud(rng, rng.integers(0, 10), rng.integers(0, 10), size=400.0)
        within = np.sqrt(((pred[:, None] - truth[None]) ** 2).sum(-1)) <= R
        if within.size and (within.sum(0) > 1).any() and (within.sum(1) > 1).any():
            continue
        assert detection.match_points(pred, scores, truth, R) == _challenge_match(pred, truth, R)
        checked += int(within.any())
    assert checked > 50


def test_matching_goes_by_score_to_the_nearest_truth():
    truth = np.array([[0.0, 0.0], [0.0, 40.0]])
    pred = np.array([[0.0, 20.0], [0.0, 5.0]])  # 20 px from both truths; 5 px from truth 0 only
    assert detection.greedy_match(pred, [0.9, 0.8], truth, R).tolist() == [0, -1]  # tie → lower index; greedy
    assert detection.greedy_match(pred, [0.8, 0.9], truth, R).tolist() == [1, 0]
    assert detection.greedy_match([[0.0, 19.0], [0.0, 21.0]], [1.0, 0.5], truth, R).tolist() == [0, 1]
    assert detection.greedy_match([[0.0, 21.0], [0.0, 19.0]], [1.0, 0.5], truth, R).tolist() == [1, 0]
    assert detection.match_points(np.array([[0.0, 30.0]]), [1.0], np.zeros((1, 2)), R) == (1, 0, 0)  # inclusive
    assert detection.match_points(np.array([[0.0, 30.01]]), [1.0], np.zeros((1, 2)), R) == (0, 1, 1)
    assert detection.match_points(np.zeros((0, 2)), [], truth, R) == (0, 0, 2)


def test_micrometre_radius_in_pixels():
    assert detection.radius_pixels(7.5, 0.25) == 30.0  # MIDOG's radius at 0.25 µm/px
    assert detection.radius_pixels(7.5, 0.23) == pytest.approx(32.6087, abs=1e-4)  # the Hamamatsu scanners
    with pytest.raises(ValueError, match="microns_per_pixel must be > 0"):
        detection.radius_pixels(7.5, 0.0)


def test_midog_order_walks_truths_in_annotation_order_not_by_score():
    # prediction 0 lies 10 px from truth A and 20 px from truth B; prediction 1 lies 25 px from A only
    a, b = [0.0, 0.0], [0.0, 30.0]
    pred = np.array([[0.0, 10.0], [0.0, -25.0]])
    # A first: A takes its nearest (0), B finds 0 taken and nothing else within 30 px → TP 1, FN 1, FP 1
    assert detection.midog_match([a, b], pred, R).tolist() == [0, -1]
    assert detection.midog_counts([a, b], pred, R) == (1, 1, 1)
    # B first: B takes 0 (its only one), then A takes 1 → two matches; the annotation order changes the count
    assert detection.midog_match([b, a], pred, R).tolist() == [0, 1]
    assert detection.midog_counts([b, a], pred, R) == (2, 0, 0)
    # greedy by score (the tile-score variant), prediction 0 the better one: it takes its nearest truth (A), and
    # prediction 1 is 55 px from B → (1, 1, 1) whatever the annotation order
    assert detection.greedy_match(pred, [0.9, 0.5], np.array([a, b]), R).tolist() == [0, -1]
    assert detection.match_points(pred, [0.9, 0.5], np.array([b, a]), R) == (1, 1, 1)
    # prediction 1 the better one: it takes A (its only truth), then prediction 0 takes B → (2, 0, 0)
    assert detection.match_points(pred, [0.5, 0.9], np.array([a, b]), R) == (2, 0, 0)


def test_midog_order_takes_the_nearest_free_prediction_and_ignores_scores():
    truth = np.array([[0.0, 0.0]])
    pred = np.array([[0.0, 20.0], [0.0, 5.0], [0.0, 5.0]])  # 5 px twice: the tie goes to the lower index
    assert detection.midog_match(truth, pred, R).tolist() == [1]
    assert detection.midog_counts(truth, pred, R) == (1, 2, 0)
    # two truths, two predictions: truth 0 takes the nearer (index 1, 3 px); truth 1 takes what is left
    truth2 = np.array([[0.0, 0.0], [0.0, 12.0]])
    pred2 = np.array([[0.0, 10.0], [0.0, 3.0]])
    assert detection.midog_match(truth2, pred2, R).tolist() == [1, 0]
    assert detection.midog_match(truth2[::-1], pred2, R).tolist() == [0, 1]  # 12→10 (2 px) first, then 0→3
    assert detection.midog_counts(np.array([[0.0, 0.0]]), np.array([[0.0, 30.0]]), R) == (1, 0, 0)  # inclusive
    assert detection.midog_counts(np.array([[0.0, 0.0]]), np.array([[0.0, 30.01]]), R) == (0, 1, 1)
    assert detection.midog_counts(np.zeros((0, 2)), pred, R) == (0, 3, 0)
    assert detection.midog_counts(truth, np.zeros((0, 2)), R) == (0, 0, 1)


def test_midog_match_equals_the_challenge_loop_on_random_clouds():
    rng = np.random.default_rng(4)
    for _ in range(200):
        pred, _, truth = _cloud(rng, rng.integers(0, 10), rng.integers(0, 10))
        assert detection.midog_counts(truth, pred, R) == _challenge_match(pred, truth, R)


def test_nms_keeps_separated_best_points_and_is_prefix_consistent():
    rng = np.random.default_rng(2)
    for _ in range(100):
        n = int(rng.integers(1, 30))
        yx, scores = rng.uniform(0, 120, (n, 2)), rng.random(n)
        kept = detection.non_max_suppression(yx, scores, R)
        d = np.sqrt(((yx[:, None] - yx[None]) ** 2).sum(-1))
        assert kept[0] == np.argmax(scores) and np.all(np.diff(scores[kept]) <= 0)
        assert np.all(d[np.ix_(kept, kept)][~np.eye(len(kept), dtype=bool)] > R)
        for i in set(range(n)) - set(kept.tolist()):  # every dropped point has a better kept one nearby
            assert np.any((d[i, kept] <= R) & (scores[kept] >= scores[i]))
        t = np.quantile(scores, 0.5)
        top = np.flatnonzero(scores >= t)
        np.testing.assert_array_equal(np.sort(top[detection.non_max_suppression(yx[top], scores[top], R)]),
                                      np.sort(kept[scores[kept] >= t]))
        np.testing.assert_array_equal(np.sort(detection.non_max_suppression(yx[kept], scores[kept], R)),
                                      np.arange(len(kept)))  # idempotent


def _f1(scores, labels, images, points, threshold=0.5):
    return {k: e.value for k, e in detection.detection_f1(scores, labels, images, points, threshold=threshold,
                                                          radius=R).items()}


def test_detection_f1_on_hand_built_images():
    truth = np.array([[100.0, 100.0], [300.0, 300.0]])
    # all correct: each truth's own tile scores high, a far negative scores low
    points = np.concatenate([truth, [[500.0, 500.0]]])
    assert _f1([0.9, 0.8, 0.1], [1, 1, 0], [7, 7, 7], points) == {
        "detection_f1": 1.0, "detection_precision": 1.0, "detection_recall": 1.0}
    # every detection far from every truth
    far = _f1([0.1, 0.2, 0.9, 0.9], [1, 1, 0, 0], [7] * 4, np.concatenate([truth, [[600.0, 0.0], [0.0, 600.0]]]))
    assert far == {"detection_f1": 0.0, "detection_precision": 0.0, "detection_recall": 0.0}
    # duplicates near one truth: matched once, the rest are false positives ...
    dupes = np.array([[100.0, 110.0], [100.0, 90.0], [110.0, 100.0]])
    assert detection.match_points(dupes, [0.9, 0.8, 0.7], truth[:1], R) == (1, 2, 0)
    # ... unless NMS removes them (all within 30 px of the best one) ...
    nms = _f1([0.5, 0.9, 0.8, 0.7], [1, 0, 0, 0], [1] * 4, np.concatenate([truth[:1], dupes]))
    assert nms["detection_f1"] == 1.0
    # ... which it cannot for two detections 50 px apart, both within 30 px of the truth
    apart = _f1([0.2, 0.9, 0.8], [1, 0, 0], [1] * 3, [[100.0, 100.0], [100.0, 125.0], [100.0, 75.0]])
    assert apart["detection_precision"] == 0.5 and apart["detection_f1"] == pytest.approx(2 / 3)


def test_f1_pools_counts_over_images_and_keeps_images_apart():
    # image 1: its one truth found; image 2: three truths, none above the threshold
    points = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 200.0], [0.0, 400.0]])
    pooled = _f1([0.9, 0.1, 0.1, 0.1], [1, 1, 1, 1], [1, 2, 2, 2], points)
    assert pooled["detection_f1"] == pytest.approx(2 / (2 + 3))  # not the mean of per-image F1s (0.5)
    # the same position in another image is not a match
    assert _f1([0.9, 0.1], [0, 1], [1, 2], [[0.0, 0.0], [0.0, 0.0]])["detection_f1"] == 0.0


def test_no_truths_is_undefined_with_a_reason_not_nan():
    out = detection.detection_f1([0.9, 0.2], [0, 0], [1, 1], [[0.0, 0.0], [0.0, 300.0]], threshold=0.5, radius=R)
    assert isinstance(out["detection_f1"].value, str) and "no ground-truth objects" in out["detection_f1"].value
    assert isinstance(out["detection_recall"].value, str)
    assert out["detection_precision"].value == 0.0  # one detection, necessarily false
    nothing = detection.detection_f1([0.1], [1], [1], [[0.0, 0.0]], threshold=0.5, radius=R)
    assert "no detections" in nothing["detection_precision"].value and nothing["detection_f1"].value == 0.0


def _brute_threshold(scores, labels, images, points):
    """Best pooled F1 over the candidate thresholds, recomputing NMS and matching from scratch for each."""
    best = (-1.0, None)
    for t in sorted(set(scores), reverse=True):
        tp = fp = fn = 0
        for image in np.unique(images):
            rows = np.flatnonzero(images == image)
            on = rows[scores[rows] >= t]
            kept = on[detection.non_max_suppression(points[on], scores[on], R)]
            a, b, c = detection.match_points(points[kept], scores[kept], points[rows[labels[rows] == 1]], R)
            tp, fp, fn = tp + a, fp + b, fn + c
        f1 = 2 * tp / (2 * tp + fp + fn)
        if f1 > best[0]:
            best = (f1, t)
    return best


def test_threshold_maximises_pooled_f1_like_a_full_recomputation():
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = 40
        images, labels = rng.integers(0, 4, n), (rng.random(n) < 0.3).astype(int)
        points = rng.uniform(0, 150, (n, 2))
        scores = np.round(np.clip(0.4 * labels + rng.random(n) * 0.8, 0, 1), 1)  # ties on purpose
        threshold, note = detection.choose_threshold(scores, labels, images, points, R, fallback=0.5)
        best_f1, best_t = _brute_threshold(scores, labels, images, points)
        assert note is None and threshold == best_t
        counts = detection.row_counts(detection.score_images(scores, labels, images, points, R), scores, labels,
                                      threshold).sum(0)
        assert 2 * counts[0] / (2 * counts[0] + counts[1] + counts[2]) == pytest.approx(best_f1)
    threshold, note = detection.choose_threshold([0.3, 0.7], [0, 0], [1, 1], np.zeros((2, 2)), R, fallback=0.42)
    assert threshold == 0.42 and "no ground-truth objects" in note


# ---------------------------------------------------------------- in the suite

SITES = ["src", "b", "c"]


def _scenes(rng, site_images: dict[int, int], first_image: int) -> dict[str, np.ndarray]:
    """Images of 6 objects (label 1) and 10 other tiles each, 100 px apart on a grid; dimension 0 of the
    embedding carries the label."""
    rows = {k: [] for k in ("x", "y", "site", "image", "coords")}
    image = first_image
    for site, count in site_images.items():
        for _ in range(count):
            y = np.r_[np.ones(6, int), np.zeros(10, int)]
            x = rng.normal(size=(16, 4))
            x[:, 0] += 2.0 * y
            x[:, 1] += 0.5 * site
            for key, value in (("x", x), ("y", y), ("site", np.full(16, site)), ("image", np.full(16, image)),
                               ("coords", 100 * np.stack(np.unravel_index(rng.choice(400, 16, replace=False),
                                                                          (20, 20)), axis=1))):
                rows[key].append(value)
            image += 1
    return {k: np.concatenate(v) for k, v in rows.items()}


def _method(seed: int = 0) -> MethodEmbeddings:
    rng = np.random.default_rng(seed)
    train, held = _scenes(rng, {0: 10}, 0), _scenes(rng, {0: 4, 1: 4, 2: 4}, 100)
    return MethodEmbeddings(
        train=train["x"], train_labels=train["y"], heldout=held["x"], heldout_labels=held["y"],
        heldout_sites=held["site"], train_groups=train["image"], heldout_groups=held["image"],
        heldout_coords=held["coords"], train_coords=train["coords"], tile_size=64)


FAST = default_settings(bootstrap_replicates=60, protocols=(), signature_folds=0, detection_radius=R)


def _evaluate(methods, settings=FAST):
    return evaluate_embeddings(methods, site_names=SITES, source_site="src", key=jax.random.key(0), settings=settings)


@pytest.fixture(scope="module")
def metrics():
    return _evaluate({"m": _method()})


def test_suite_reports_detection_per_site_with_intervals_and_an_unseen_mean(metrics):
    m = metrics["methods"]["m"]
    for site in SITES:
        entry = m["per_site"][site]
        assert 0.5 < entry["detection_f1"] <= 1.0 and 0 <= entry["detection_recall"] <= 1
        lo, hi = entry["ci"]["detection_f1"]
        assert lo <= entry["detection_f1"] <= hi and hi - lo > 0  # resampling the site's 4 images varies
    assert m["summary"]["mean_unseen_detection_f1"] == pytest.approx(
        np.mean([m["per_site"][s]["detection_f1"] for s in ("b", "c")]))
    assert m["detection"]["radius"] == R and m["detection"]["validation_objects"] % 6 == 0
    assert "detection_f1" in metrics["notes"]
    json.dumps(metrics, allow_nan=False)


def test_isolated_tiles_make_detection_the_probe_classification(metrics):
    # no two tiles within 2 × radius: NMS keeps every candidate and a detection matches only its own tile,
    # so detection F1 is the probe's tile F1 and both thresholds maximise the same validation F1
    m = metrics["methods"]["m"]
    assert m["detection"]["threshold"] == m["probe"]["threshold"]
    for site in SITES:
        assert m["per_site"][site]["detection_f1"] == pytest.approx(m["per_site"][site]["f1"])


def test_detection_threshold_never_sees_target_labels(metrics):
    m = _method()
    flipped = np.where(m.heldout_sites == 0, m.heldout_labels, 1 - m.heldout_labels)
    other = _evaluate({"m": dataclasses.replace(m, heldout_labels=flipped)})["methods"]["m"]
    before = metrics["methods"]["m"]
    assert other["detection"]["threshold"] == before["detection"]["threshold"]
    assert other["per_site"]["src"]["detection_f1"] == before["per_site"]["src"]["detection_f1"]
    assert other["per_site"]["b"]["detection_f1"] < before["per_site"]["b"]["detection_f1"]  # the targets changed


def test_a_site_without_objects_is_undefined_and_the_rest_stays():
    m = _method(1)
    labels = np.where(m.heldout_sites == 2, 0, m.heldout_labels)
    result = _evaluate({"m": dataclasses.replace(m, heldout_labels=labels)})
    json.dumps(result, allow_nan=False)
    c = result["methods"]["m"]["per_site"]["c"]
    assert c["detection_f1"] is None and "no ground-truth objects" in c["undefined"]["detection_f1"]
    summary = result["methods"]["m"]["summary"]
    assert summary["mean_unseen_detection_f1"] == result["methods"]["m"]["per_site"]["b"]["detection_f1"]
    assert "undefined at c" in summary["partial"]["mean_unseen_detection_f1"]


def test_detection_is_off_without_radius_or_coordinates_and_coords_need_groups():
    m = _method(2)
    off = _evaluate({"m": m}, dataclasses.replace(FAST, detection_radius=0.0))
    no_coords = _evaluate({"m": dataclasses.replace(m, heldout_coords=None)})
    for result in (off, no_coords):
        assert "detection_f1" not in result["methods"]["m"]["per_site"]["b"]
        assert "detection" not in result["methods"]["m"] and "detection_f1" not in result["notes"]
    with pytest.raises(ValueError, match=r"'m': heldout_coords needs \['heldout_groups'\]"):
        _evaluate({"m": dataclasses.replace(m, heldout_groups=None)})
    with pytest.raises(ValueError, match=r"train_coords must be finite \(y, x\) of shape \(160, 2\)"):
        _evaluate({"m": dataclasses.replace(m, train_coords=m.train_coords[:, :1])})


# ---------------------------------------------------------------- MIDOG replica end to end


@pytest.fixture(scope="module")
def midog_eval(tmp_path_factory):
    """The builder test's replica with a dark nucleus painted on each mitotic figure, built with 32-px tiles,
    evaluated with the raw-colour baseline (no model) and MIDOG's 30-px radius."""
    root = tmp_path_factory.mktemp("midog_raw")
    data_dir = tmp_path_factory.mktemp("midog_tfds")
    make_painted_replica(root, data_dir)
    config = tiny_config()
    config.data.name, config.data.data_dir, config.data.builder_config = "midog", str(data_dir), "test32"
    ev = config.eval
    ev.source_split, ev.heldout_splits, ev.source_site = "train", ("test",), "hamamatsu_xr"
    ev.summary_exclude, ev.max_split_tiles, ev.detection_radius = (), 0, 30.0
    ev.protocols, ev.signature_folds = (), 0
    out = tmp_path_factory.mktemp("midog_eval")
    return pipeline.evaluate_features(config, {RAW_COLOUR: raw_colour_features(config)}, out)


def test_midog_replica_reports_detection_per_scanner(midog_eval):
    metrics, paths = midog_eval
    assert json.loads(paths["metrics"].read_text("utf-8")) == metrics
    raw = metrics["methods"][RAW_COLOUR]
    scanners = ["hamamatsu_xr", "hamamatsu_s360", "aperio_cs2"]
    for scanner in scanners:  # 2 mitoses per test image; the painted nuclei make them easy to find
        assert raw["per_site"][scanner]["detection_f1"] >= 0.5, raw["per_site"][scanner]
    leica = raw["per_site"]["leica_gt450"]
    assert leica["n"] == 0 and "min_site_samples" in leica["undefined"]["detection_f1"]
    assert raw["detection"]["radius"] == 30.0 and raw["detection"]["validation_objects"] >= 2
    text = paths["report"].read_text("utf-8")
    assert "## Detection per site (tile-score variant)" in text and "Tile-score detection threshold" in text
    table = text.split("### Tile-score detection F1 (cheap variant)")[1].split("###")[0]
    row = next(line for line in table.splitlines() if line.startswith(f"| {RAW_COLOUR} |"))
    assert all(f"{raw['per_site'][s]['detection_f1']:#.3g}" in row for s in scanners)
    assert "hamamatsu_xr (source)" in table
    assert "<h2>Detection per site (tile-score variant)</h2>" in paths["html"].read_text("utf-8")
