"""Tile-score point detection per site — the cheap variant (F1, precision, recall of label-1 tiles as objects, scored
by the probe's tile scores), for methods with tile coordinates when eval.detection_radius > 0; the threshold maximises
detection F1 on source validation images. The real detector (a heat-map head on patch tokens, MIDOG's matching
order) is `lmc_jax.detection` (configs/midog_detection.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import detection, probe
from lmc_jax.evaluate.families.inputs import Inputs, MethodEmbeddings
from lmc_jax.evaluate.families.layout import Table, fmt
from lmc_jax.evaluate.families.probe import SUMMARY
from lmc_jax.evaluate.families.spec import UNIT, Family, Intro, MetricSpec, Result
from lmc_jax.evaluate.settings import Settings

SECTION = "Detection per site (tile-score variant)"
_UNSEEN = ("mean_unseen",)
SPECS = (
    MetricSpec(
        "detection_f1", "detection F1", "Tile-score detection F1, the cheap variant (no detection head: the "
        "probe's tile scores are the detector; configs/midog_detection.py trains a heat-map head and scores it in "
        "MIDOG's own matching order) = 2TP/(2TP+FP+FN), matched one-to-one within a radius as the MIDOG challenge "
        "matches mitotic figures: within each image (region), the tiles whose probe P(y=1) reaches the detection "
        "threshold "
        "become candidate points at their tile centres, greedy non-maximum suppression within eval.detection_radius "
        "px keeps the best-scoring of nearby candidates, and candidates in descending score order take the nearest "
        "unmatched ground truth (the centre of a label-1 tile) within the radius, each truth matched once. TP/FP/FN "
        "are pooled over the site's images (not a mean of per-image F1s); undefined for a site without label-1 "
        "tiles. The threshold maximises pooled detection F1 on the source validation images (the probe's "
        "validation part; the probe's own threshold when they hold no label-1 tile), so target labels never pick "
        "it. Intervals resample the bootstrap units (images when groups are images) with the matches held fixed.",
        title="Tile-score detection F1 (cheap variant) = 2TP/(2TP+FP+FN), TP/FP/FN pooled over the site's images",
        direction=1, bounds=UNIT, columns=_UNSEEN),
    MetricSpec(
        "detection_precision", "detection precision",
        "TP/(TP+FP) of the same matches; undefined when nothing is detected.",
        title="Tile-score detection precision TP/(TP+FP)", direction=1, bounds=UNIT, columns=_UNSEEN),
    MetricSpec(
        "detection_recall", "detection recall",
        "TP/(TP+FN) of the same matches (share of label-1 tiles found); undefined without any.",
        title="Tile-score detection recall TP/(TP+FN) (share of label-1 objects found)", direction=1, bounds=UNIT,
        columns=_UNSEEN),
)
KEYS = tuple(s.key for s in SPECS)


def applies(m: MethodEmbeddings, settings: Settings) -> bool:
    """Tile coordinates given and eval.detection_radius > 0."""
    return m.heldout_coords is not None and settings.detection_radius > 0


def evaluate(inputs: Inputs) -> Result:
    """Detection F1/precision/recall at every site, at the threshold maximising detection F1 on the probe's source
    validation images (never a held-out row)."""
    m, s, p = inputs.m, inputs.ctx.settings, inputs.probe
    if isinstance(p.fitted, str):
        return Result({n: dict.fromkeys(KEYS, p.fitted) for n in inputs.ctx.site_names},
                      entries={"detection": {"undefined": p.fitted}})
    radius = s.detection_radius
    val_scores = probe.predict_proba(p.fitted.params, np.asarray(m.train)[p.val])
    val_labels, val_images = np.asarray(m.train_labels)[p.val], np.asarray(m.train_groups)[p.val]
    threshold, note = detection.choose_threshold(
        val_scores, val_labels, val_images, detection.tile_centres(np.asarray(m.train_coords)[p.val], m.tile_size),
        radius, fallback=p.fitted.threshold)
    labels, images = np.asarray(m.heldout_labels), np.asarray(m.heldout_groups)
    points = detection.tile_centres(m.heldout_coords, m.tile_size)
    per_site = inputs.each_site(KEYS, lambda n, rows, b: detection.detection_f1(
        p.scores[rows], labels[rows], images[rows], points[rows], threshold=threshold, radius=radius, blocks=b))
    info = {"threshold": threshold, "threshold_note": note, "radius": radius,
            "validation_images": int(len(np.unique(val_images))), "validation_objects": int(np.sum(val_labels == 1))}
    return Result(per_site, entries={"detection": info})


def _threshold_table(metrics: Mapping) -> Table:
    rows = []
    for name, m in metrics["methods"].items():
        d = m.get("detection", {})
        if "threshold" not in d:
            rows.append([name, "n/a", "n/a", "n/a", "n/a", d.get("undefined", "")])
            continue
        rows.append([name, fmt(d["threshold"]), fmt(d["radius"]), str(d["validation_images"]),
                     str(d["validation_objects"]), d.get("threshold_note") or "—"])
    return Table("Tile-score detection threshold (maximises pooled detection F1 on SOURCE validation images; never sees a "
                 "target label)", ["method", "threshold", "radius (px)", "validation images", "validation objects",
                                   "note"], rows)


def intro(metrics: Mapping, figure_names: Sequence[str]) -> Intro:
    return Intro(paragraphs=[
        "The cheap, tile-score variant of detection (no detection head). Label-1 tiles are the ground-truth objects "
        "(for MIDOG: one tile centred on each mitotic figure). Per image, "
        "tiles whose probe P(y=1) reaches the threshold become detections at their tile centres; non-maximum "
        "suppression and one-to-one matching use the radius below, as the MIDOG challenge does (30 px = 7.5 µm at "
        "0.25 µm/px)."], tables=[_threshold_table(metrics)])


FAMILY = Family("detection", SPECS, evaluate, applies=applies, section=SECTION, summary_table=SUMMARY, intro=intro)
