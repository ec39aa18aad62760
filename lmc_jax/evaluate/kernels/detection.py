"""Point detection: one-to-one matches within a radius, pooled F1 — the cheap tile-score variant and MIDOG's rule.

The tile-score variant (`score_images`, `detection_f1`, `choose_threshold`): scored tiles become candidate points at
their centres and the label-1 tiles of an image are its ground-truth objects (the MIDOG builder writes one tile per
mitotic figure, centred on it); candidates are matched greedily by descending score, so one pass serves every
threshold. The heat-map detector of `lmc_jax.detection` is scored with `midog_match`, the challenge's own order.
Pure NumPy/SciPy.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.spatial import cKDTree

from lmc_jax.evaluate.kernels import bootstrap
from lmc_jax.evaluate.kernels.bootstrap import Blocks, Estimate


class Detections(NamedTuple):
    """Per-row outcome of NMS and matching over ALL candidates of each image, before any threshold.

    Both steps are greedy in descending score order and a row's fate depends only on higher-scoring rows,
    so for every threshold t the result on the rows with score ≥ t is these flags cut at t.
    """

    kept: np.ndarray  # (M,) bool: survives non-maximum suppression among its image's candidates
    hit: np.ndarray  # (M,) bool: kept and matched to a ground-truth object (a true positive)
    found_at: np.ndarray  # (M,) float: for a label-1 row, the score of the detection matched to it; -inf if none


def tile_centres(coords: np.ndarray, tile_size: int) -> np.ndarray:
    """Centres (y, x) of square tiles from their top-left corners (N, 2): coords + tile_size / 2, float64."""
    return np.asarray(coords, np.float64).reshape(-1, 2) + tile_size / 2


def _points(yx: np.ndarray) -> np.ndarray:
    return np.asarray(yx, np.float64).reshape(-1, 2)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Row order by decreasing score; equal scores keep their row order."""
    return np.argsort(-np.asarray(scores, np.float64), kind="stable")


def non_max_suppression(yx: np.ndarray, scores: np.ndarray, radius: float) -> np.ndarray:
    """Indices kept by greedy NMS, best first: keep the highest-scoring remaining point, drop every other point
    within `radius` (Euclidean, inclusive) of it, repeat. Equal scores go to the lower index."""
    yx = _points(yx)
    kept: list[int] = []
    if len(yx):
        tree, suppressed = cKDTree(yx), np.zeros(len(yx), bool)
        for i in _descending(scores):
            if not suppressed[i]:
                kept.append(int(i))
                suppressed[tree.query_ball_point(yx[i], radius)] = True
    return np.asarray(kept, np.int64)


def radius_pixels(microns: float, microns_per_pixel: float) -> float:
    """A distance in micrometres as pixels of an image scanned at `microns_per_pixel` (7.5 µm at 0.25 µm/px = 30 px)."""
    if microns_per_pixel <= 0:
        raise ValueError(f"microns_per_pixel must be > 0, got {microns_per_pixel}")
    return float(microns) / float(microns_per_pixel)


def midog_match(truth_yx: np.ndarray, pred_yx: np.ndarray, radius: float) -> np.ndarray:
    """For each ground truth, in the order given, the index of the prediction it claims, or -1: MIDOG's rule.

    The MIDOG 2021 evaluation (github.com/DeepMicroscopy/MIDOG_evaluation_docker, evaluation.py) calls evalutils'
    `score_detection(ground_truth=gt, predictions=thresholded_points, radius=7.5E-3)` per image, points in mm
    (7.5 µm). evalutils (github.com/comic/evalutils, evalutils/scorers.py) builds a BallTree of the PREDICTIONS
    (not of the truths), queries every truth's predictions within the radius sorted nearest first
    (`query_radius(..., sort_results=True)`, distance ≤ radius), then walks the truths in annotation order: each
    takes its nearest prediction not yet taken, else counts as a false negative; untaken predictions are false
    positives. Scores play no part (the participant thresholds first). Equal distances go to the lower prediction
    index here (the BallTree's order among exact ties is unspecified).
    """
    truth, pred = _points(truth_yx), _points(pred_yx)
    claim = np.full(len(truth), -1, np.int64)
    if not len(truth) or not len(pred):
        return claim
    tree, taken = cKDTree(pred), np.zeros(len(pred), bool)
    for j, point in enumerate(truth):
        near = np.asarray(tree.query_ball_point(point, radius), np.int64)
        if not len(near):
            continue
        distance = np.hypot(*(pred[near] - point).T)
        free = [int(i) for i in near[np.lexsort((near, distance))] if not taken[i]]
        if free:
            claim[j], taken[free[0]] = free[0], True
    return claim


def midog_counts(truth_yx: np.ndarray, pred_yx: np.ndarray, radius: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of thresholded predictions vs ground truths by MIDOG's rule (`midog_match`)."""
    claim = midog_match(truth_yx, pred_yx, radius)
    tp = int(np.sum(claim >= 0))
    return tp, len(_points(pred_yx)) - tp, len(claim) - tp


def greedy_match(pred_yx: np.ndarray, pred_scores: np.ndarray, truth_yx: np.ndarray, radius: float) -> np.ndarray:
    """For each prediction, the index of the truth it matches, or -1 (see `match_points` for the rule)."""
    pred, truth = _points(pred_yx), _points(truth_yx)
    match = np.full(len(pred), -1, np.int64)
    if not len(pred) or not len(truth):
        return match
    tree, taken = cKDTree(truth), np.zeros(len(truth), bool)
    for i in _descending(pred_scores):
        near = np.asarray(tree.query_ball_point(pred[i], radius), np.int64)
        near = near[~taken[near]]
        if len(near):
            distance = np.hypot(*(truth[near] - pred[i]).T)
            j = near[np.lexsort((near, distance))[0]]  # nearest; equal distances go to the lower index
            match[i], taken[j] = j, True
    return match


def match_points(pred_yx: np.ndarray, pred_scores: np.ndarray, truth_yx: np.ndarray,
                 radius: float) -> tuple[int, int, int]:
    """(TP, FP, FN) of predictions vs ground-truth points: predictions in descending score order each take the
    nearest still-unmatched truth within `radius` (inclusive); each truth is matched at most once.

    The MIDOG challenges score with evalutils' `score_detection` (radius 7.5 µm = 30 px at 0.25 µm/px; see
    `midog_match`), which is greedy too but walks the truths in annotation order, each taking its nearest unclaimed
    prediction, after the participant has thresholded the predictions; neither is an optimal (Hungarian) assignment.
    The two give the same counts whenever no prediction is within the radius of two truths or no truth within the
    radius of two predictions; they can differ only where truths closer than 2 × radius share predictions (see
    tests/test_detection.py for a worked case). Going by score makes
    the counts independent of the annotation order and lets one pass serve every threshold (see `Detections`).
    """
    match = greedy_match(pred_yx, pred_scores, truth_yx, radius)
    tp = int(np.sum(match >= 0))
    return tp, len(match) - tp, len(_points(truth_yx)) - tp


def score_images(scores: np.ndarray, labels: np.ndarray, images: np.ndarray, points: np.ndarray,
                 radius: float) -> Detections:
    """NMS and greedy matching within each image (rows sharing an `images` id), every row a candidate.

    The truths of an image are the points of its label-1 rows; cut the result at a threshold with `row_counts`.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    images, points = np.asarray(images), _points(points)
    kept, hit = np.zeros(len(scores), bool), np.zeros(len(scores), bool)
    found_at = np.full(len(scores), -np.inf)
    for image in np.unique(images):
        rows = np.flatnonzero(images == image)
        truths = rows[labels[rows] == 1]
        survivors = rows[non_max_suppression(points[rows], scores[rows], radius)]
        match = greedy_match(points[survivors], scores[survivors], points[truths], radius)
        kept[survivors], hit[survivors] = True, match >= 0
        found_at[truths[match[match >= 0]]] = scores[survivors[match >= 0]]
    return Detections(kept, hit, found_at)


def row_counts(detections: Detections, scores: np.ndarray, labels: np.ndarray, threshold: float) -> np.ndarray:
    """(M, 3) per-row TP, FP, FN at `threshold`: a TP/FP on the detection's row, an FN on the missed truth's row."""
    on = detections.kept & (np.asarray(scores, np.float64) >= threshold)
    missed = (np.asarray(labels) == 1) & (detections.found_at < threshold)
    return np.column_stack([on & detections.hit, on & ~detections.hit, missed]).astype(np.float64)


def choose_threshold(scores: np.ndarray, labels: np.ndarray, images: np.ndarray, points: np.ndarray, radius: float,
                     fallback: float) -> tuple[float, str | None]:
    """(threshold, note): the score t maximising detection F1 pooled over the images when every row with score ≥ t
    is a candidate — pass SOURCE validation data only. Ties in F1 go to the highest t; `fallback` (with the reason
    as the note) when the data hold no truth."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    num_truths = int(np.sum(labels == 1))
    if not num_truths:
        return fallback, (f"no ground-truth objects (label-1 tiles) among the {len(scores)} validation tiles; "
                          f"fallback threshold {fallback:.4g}")
    detections = score_images(scores, labels, images, points, radius)
    kept = np.flatnonzero(detections.kept)
    order = kept[_descending(scores[kept])]
    ranked = scores[order]
    last = np.r_[ranked[1:] != ranked[:-1], True]  # last row of each distinct score: detect up to here
    tp = np.cumsum(detections.hit[order])[last]
    f1 = 2 * tp / (np.flatnonzero(last) + 1 + num_truths)
    return float(ranked[last][int(np.argmax(f1))]), None


def detection_f1(scores: np.ndarray, labels: np.ndarray, images: np.ndarray, points: np.ndarray, *, threshold: float,
                 radius: float, blocks: Blocks | None = None) -> dict[str, Estimate]:
    """Detection F1 = 2TP/(2TP+FP+FN), precision and recall with TP/FP/FN pooled over the images (not a mean of
    per-image F1s): per image, rows with score ≥ threshold → NMS within radius → matched to the label-1 points.

    `blocks` (over these rows) gives bootstrap replicates with the matches held fixed; None = one block, no
    interval. F1 and recall are undefined (a reason, never NaN) without truths; precision without detections.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    if blocks is None:
        blocks = Blocks(ids=np.zeros(len(scores), np.int64), num=1, unit="example", counts=np.zeros((0, 1)))
    counts = row_counts(score_images(scores, labels, images, points, radius), scores, labels, threshold)
    sums = bootstrap.block_sums(blocks, counts)

    def pooled(c: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return c @ sums[:, 0], c @ sums[:, 1], c @ sums[:, 2]

    def f1(c: np.ndarray) -> np.ndarray:
        tp, fp, fn = pooled(c)
        return np.where(tp + fn > 0, bootstrap.ratio(2 * tp, 2 * tp + fp + fn), np.nan)

    def precision(c: np.ndarray) -> np.ndarray:
        tp, fp, _ = pooled(c)
        return bootstrap.ratio(tp, tp + fp)

    def recall(c: np.ndarray) -> np.ndarray:
        tp, _, fn = pooled(c)
        return bootstrap.ratio(tp, tp + fn)

    no_truths = f"no ground-truth objects (label-1 tiles) among {len(labels)} tiles"
    return {
        "detection_f1": bootstrap.estimate(blocks, f1, no_truths),
        "detection_precision": bootstrap.estimate(blocks, precision,
                                                  f"no detections with score ≥ {threshold:.4g} after NMS"),
        "detection_recall": bootstrap.estimate(blocks, recall, no_truths),
    }
