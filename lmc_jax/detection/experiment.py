"""The cross-scanner detection experiment: per row ([normaliser+]encoder), a head trained on the source scanner's
training images, a threshold picked on its validation images, MIDOG F1 on every scanner's test images.

Two data sources (config.detection.data_source): "midog" (MIDOG 2021 mitotic figures, detection/data.py) and
"embedded" (the embedded slide's regions rendered by every evaluation site, proxy nuclei: detection/embedded.py);
a "scanner" of the tables is then a site.

Writes `results.json` and `results.md` (one table: rows × scanners) to the output folder.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipelines import tiling
from lmc_jax import methods, runs
from lmc_jax.detection import data as ddata
from lmc_jax.detection import embedded, fit
from lmc_jax.detection.peaks import find_peaks
from lmc_jax.errors import UserError
from lmc_jax.evaluate.kernels import detection as kernels
from lmc_jax.stain import normalizers

MIDOG, EMBEDDED = "midog", "embedded"
DATA_SOURCES = (MIDOG, EMBEDDED)
MATCHING = ("MIDOG 2021 (evalutils score_detection): per image, the ground truths in MIDOG.json order each take "
            "their nearest not-yet-taken prediction within the radius; TP/FP/FN pooled over a scanner's images")
EMBEDDED_MATCHING = ("MIDOG 2021's rule (evalutils score_detection): per image, the proxy nuclei in row-major order "
                     "each take their nearest not-yet-taken prediction within the radius; TP/FP/FN pooled over a "
                     "site's images")


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the table: an optional stain normaliser in front of an encoder."""

    name: str
    normaliser: str  # "" = the unnormalised images
    encoder: str  # a trained method of lmc_jax.methods (lmc, geometric_only, dann) or "untrained"


def parse_row(name: str) -> Row:
    """"macenko+lmc" → Row(normaliser "macenko", encoder "lmc"); "lmc" → no normaliser."""
    normaliser, _, encoder = name.rpartition("+")
    trained = [n for n, m in methods.METHODS.items() if m.train_config is not None]
    if encoder not in (*trained, "untrained"):
        raise UserError(f"config.detection.rows: {name!r} names encoder {encoder!r}; choose from "
                        f"{[*trained, 'untrained']}, optionally after a normaliser ('macenko+lmc')")
    if normaliser and normaliser not in normalizers.NAMES:
        raise UserError(f"config.detection.rows: {name!r} names normaliser {normaliser!r}; choose from "
                        f"{list(normalizers.NAMES)}")
    return Row(name, normaliser, encoder)


def trained_encoders(rows: Sequence[str]) -> list[str]:
    """The trained methods the rows need, in first-use order (what the detection mode trains before the heads)."""
    return list(dict.fromkeys(r.encoder for r in map(parse_row, rows) if r.encoder != "untrained"))


def _encoder(run_dir: epath.Path, name: str, use_ema: bool, mesh: jax.sharding.Mesh) -> tuple:
    """(graphdef, params, window, provenance) of encoder `name` of the run at `run_dir`."""
    if name == "untrained":
        run = runs.load_run(run_dir, use_ema=use_ema, mesh=mesh)
        graphdef, params = runs.initial_params(run.config, mesh)
        return graphdef, params, run.crop_size, {"run": str(run.directory), "step": 0, "weights": "initialisation"}
    run = runs.load_run(methods.workdir_of(run_dir, name), use_ema=use_ema, mesh=mesh)
    return run.graphdef, run.params, run.crop_size, run.provenance()


def _identity(images: np.ndarray) -> np.ndarray:
    return images


def _fit_tiles(images: list[ddata.Image], size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `count` random tissue windows (grid windows > 50% tissue) of the source scanner's training images."""
    windows = np.concatenate([ddata.grid_windows(im.pixels, size)[0] for im in images])
    tissue = np.array([tiling.tissue_mask(w).mean() > 0.5 for w in windows], bool)
    pool = windows[tissue] if tissue.any() else windows
    return pool[np.sort(rng.choice(len(pool), min(count, len(pool)), replace=False))]


def threshold_sweep(peaks: list[tuple[np.ndarray, np.ndarray]], images: list[ddata.Image], radius_microns: float,
                    max_thresholds: int) -> tuple[float, float] | None:
    """(threshold, F1) maximising MIDOG F1 pooled over `images` when the peaks with score ≥ t are the detections
    (ties in F1 go to the higher t); None when the images hold no mitotic figure. NMS by score is prefix-consistent,
    so the peaks found at the floor, cut at t, are the peaks found at t."""
    if not sum(len(im.truths) for im in images):
        return None
    scores = np.unique(np.concatenate([s for _, s in peaks] + [np.zeros(0)]))[::-1]
    if len(scores) > max_thresholds:
        scores = np.unique(np.quantile(scores, np.linspace(0, 1, max_thresholds)))[::-1]
    best = (-1.0, float("inf"))
    for t in scores:
        counts = np.sum([kernels.midog_counts(im.truths, yx[s >= t], kernels.radius_pixels(
            radius_microns, im.microns_per_pixel)) for (yx, s), im in zip(peaks, images)], axis=0)
        f1 = 2 * counts[0] / (2 * counts[0] + counts[1] + counts[2])
        if f1 > best[0]:
            best = (float(f1), float(t))
    return best[1], best[0]


def pooled_scores(counts: np.ndarray) -> dict:
    """F1, precision, recall of pooled (TP, FP, FN); None with a reason where undefined."""
    tp, fp, fn = (int(c) for c in counts)
    out = {"tp": tp, "fp": fp, "fn": fn, "undefined": {}}
    for key, num, den, why in (("f1", 2 * tp, 2 * tp + fp + fn, "no mitotic figures"),
                               ("precision", tp, tp + fp, "no detections"),
                               ("recall", tp, tp + fn, "no mitotic figures")):
        out[key] = num / den if den and (key != "f1" or tp + fn) else None
        if out[key] is None:
            out["undefined"][key] = why
    return out


def run_row(row: Row, run_dir: epath.Path, config: ml_collections.ConfigDict, split: dict[str, list[ddata.Image]],
            mesh: jax.sharding.Mesh) -> dict:
    """Trains the row's head on split["train"], picks its threshold on split["val"], scores split["test"]."""
    dcfg = config.detection
    graphdef, params, window, provenance = _encoder(run_dir, row.encoder, config.eval.use_ema, mesh)
    rng = np.random.default_rng(config.seed)
    transform = _identity
    if row.normaliser:
        reference = _fit_tiles(split["train"], window, dcfg.normalizer_fit_tiles, rng)
        transform = normalizers.fit_transform_fn(row.normaliser, reference)
    windows = fit.training_windows(split["train"], window, dcfg, transform, rng)
    encoder_def, encoder_params = fit.split_encoder(graphdef, params)
    detector = fit.train_head(encoder_def, encoder_params, windows, dcfg, config.seed)
    heat = fit.heatmap_fn(detector, transform, dcfg.batch_size)

    def peaks(images: list[ddata.Image], floor: float) -> list[tuple[np.ndarray, np.ndarray]]:
        return [find_peaks(heat(im.pixels), floor, kernels.radius_pixels(dcfg.min_distance_microns,
                                                                           im.microns_per_pixel), dcfg.heatmap_stride)
                for im in images]

    val = split["val"] or split["train"]
    note = None if split["val"] else ("fewer than 2 source training images: the threshold is picked on the "
                                      "training images themselves")
    chosen = threshold_sweep(peaks(val, dcfg.candidate_floor), val, dcfg.radius_microns, dcfg.max_thresholds)
    if chosen is None:
        threshold, val_f1 = 0.5, None
        note = "no mitotic figure in the validation images: threshold 0.5"
    else:
        threshold, val_f1 = chosen
    per_scanner: dict[str, np.ndarray] = {}
    images_at: dict[str, int] = {}
    for image, (yx, _) in zip(split["test"], peaks(split["test"], threshold)):
        radius = kernels.radius_pixels(dcfg.radius_microns, image.microns_per_pixel)
        counts = np.asarray(kernels.midog_counts(image.truths, yx, radius))
        per_scanner[image.scanner] = per_scanner.get(image.scanner, np.zeros(3, int)) + counts
        images_at[image.scanner] = images_at.get(image.scanner, 0) + 1
    scanners = {s: {**pooled_scores(c), "images": images_at[s]} for s, c in per_scanner.items()}
    unseen = [v["f1"] for s, v in scanners.items() if s != dcfg.source_scanner and v["f1"] is not None]
    return {
        "normaliser": row.normaliser or "none", "encoder": row.encoder, "encoder_weights": provenance,
        "threshold": threshold, "validation_f1": val_f1, "threshold_note": note,
        "train": {"windows": len(windows.images), "positive_windows": int(windows.positive.sum()),
                  "steps": len(detector.losses), "first_loss": detector.losses[0], "last_loss": detector.losses[-1]},
        "per_scanner": scanners, "mean_unseen_f1": float(np.mean(unseen)) if unseen else None,
    }


def split_images(images: list[ddata.Image], dcfg: ml_collections.ConfigDict) -> dict[str, list[ddata.Image]]:
    """train / val: the source scanner's training images (val a dcfg.val_fraction share of them, by image);
    test: every scanner's test-split images (the builder's split)."""
    if dcfg.source_scanner not in {im.scanner for im in images}:
        raise UserError(f"config.detection.source_scanner={dcfg.source_scanner!r} has no annotated images; "
                        f"scanners: {sorted({im.scanner for im in images})}")
    test = ddata.test_ids(images, dcfg.test_fraction, dcfg.split_seed)
    source = [im for im in images if im.scanner == dcfg.source_scanner and im.image_id not in test]
    val = ddata.validation_ids(source, dcfg.val_fraction, dcfg.split_seed)
    if not source:
        raise UserError(f"no training image of {dcfg.source_scanner!r} outside the test split; lower "
                        "config.detection.test_fraction")
    return {"train": [im for im in source if im.image_id not in val],
            "val": [im for im in source if im.image_id in val],
            "test": [im for im in images if im.image_id in test]}


def markdown(results: dict) -> str:
    """The results as one markdown table: rows × scanners (MIDOG F1), the unseen mean and the threshold."""
    scanners = results["scanners"]
    source = results["source_scanner"]
    head = ["row", *[f"{s} (source)" if s == source else s for s in scanners], "mean unseen", "threshold"]
    lines = [f"# {results.get('title', 'Mitotic-figure detection F1')} (trained on {source}, MIDOG matching within "
             f"{results['radius_microns']} µm)", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]

    def cell(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    for name, row in results["rows"].items():
        values = [cell(row["per_scanner"].get(s, {}).get("f1")) for s in scanners]
        lines.append("| " + " | ".join([name, *values, cell(row["mean_unseen_f1"]), f"{row['threshold']:.3g}"]) + " |")
    notes = sorted({r["threshold_note"] for r in results["rows"].values() if r["threshold_note"]})
    targets = [f"Targets: {results['targets']}."] if "targets" in results else []
    lines += ["", *targets, f"Matching: {results['matching']}.", *[f"Note: {n}." for n in notes], ""]
    return "\n".join(lines)


def data_source(dcfg: ml_collections.ConfigDict) -> str:
    """config.detection.data_source, "midog" when the config predates the key."""
    return dcfg.get("data_source", MIDOG)


def load_source(config: ml_collections.ConfigDict) -> tuple[dict[str, list[ddata.Image]], dict]:
    """(train / val / test images, the results' description of the data) of config.detection.data_source."""
    dcfg = config.detection
    if data_source(dcfg) == EMBEDDED:
        split, mpp = embedded.load_split(dcfg)
        return split, {"title": "Proxy-nucleus detection F1", "targets": embedded.TARGETS,
                       "matching": EMBEDDED_MATCHING,
                       "microns_per_pixel": {s: mpp for s in dcfg.sites}, "scanners": list(dcfg.sites)}
    split = split_images(ddata.load_images(config.data.manual_dir, dcfg.microns_per_pixel), dcfg)
    return split, {
        "microns_per_pixel": {s: (dcfg.microns_per_pixel or ddata.MICRONS_PER_PIXEL[s]) for s in ddata.SCANNERS},
        "scanners": [s for s in ddata.SCANNERS if any(im.scanner == s for im in split["test"])]}


def run(config: ml_collections.ConfigDict, run_dir: epath.PathLike, out_dir: epath.PathLike,
        mesh: jax.sharding.Mesh) -> dict:
    """Every row of config.detection.rows on the images of config.detection.data_source (MIDOG: those of
    config.data.manual_dir) → out_dir/results.{json,md}."""
    dcfg = config.detection
    rows = [parse_row(name) for name in dcfg.rows]
    split, described = load_source(config)
    logging.info("detection: %d training, %d validation, %d test images", *(len(split[k]) for k in ("train", "val",
                                                                                                     "test")))
    results = {
        "source_scanner": dcfg.source_scanner, "radius_microns": dcfg.radius_microns, "matching": MATCHING,
        **described,
        "images": {k: [im.image_id for im in v] for k, v in split.items()},
        "rows": {row.name: run_row(row, epath.Path(run_dir), config, split, mesh) for row in rows},
    }
    out = epath.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False))
    (out / "results.md").write_text(markdown(results))
    return results
