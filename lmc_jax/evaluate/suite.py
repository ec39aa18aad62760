"""The evaluation suite: per method and site, separation from the source, batch mixing, probe transfer and
(with tile coordinates) point-detection F1.

Numbers in (embeddings already computed), a JSON-serialisable, versioned metrics dict out; no model
code here. Every value is a number with a 95% block-bootstrap interval, a number reported without
one (the reason is recorded), or None with the reason it is undefined — never NaN.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from lmc_jax.evaluate import bootstrap, calibration, detection, probe, protocol, signatures, transfer
from lmc_jax.evaluate.bootstrap import Blocks, Estimate
from lmc_jax.evaluate import domain_shift, mixing
from lmc_jax.evaluate.domain_shift import DISTANCES, Site, site_distances
from lmc_jax.evaluate.mixing import MIXING, mixing_estimates
from lmc_jax.evaluate.settings import Settings
from lmc_jax.evaluate.separation import standardize

SCHEMA_VERSION = 2
PROBE_METRICS = calibration.METRICS
DETECTION_METRICS = detection.METRICS  # per site only with tile coordinates and eval.detection_radius > 0
PER_SITE = DISTANCES + MIXING + PROBE_METRICS
BOUNDS = {**domain_shift.BOUNDS, **mixing.BOUNDS, **calibration.BOUNDS, **detection.BOUNDS}
SUMMARY_BOUNDS = {**{f"{prefix}_{k}": b for k, b in BOUNDS.items() for prefix in ("mean_unseen", "source")},
                  **mixing.BOUNDS, "auc_drop": (-1.0, 1.0)}

NOTES = {
    "fd": "Fréchet distance ‖μ1−μ2‖²+Tr(Σ1+Σ2−2(Σ1Σ2)^½) between Gaussian fits of the source and the site's "
    "held-out embeddings, both z-scored with the source held-out statistics (= squared W2 of the Gaussian fits), "
    "divided by the embedding width D = the source's own total variance after z-scoring, so encoders of different "
    "width and scale are comparable. Lower = closer to the source = more invariant.",
    "fd_raw": "The same Fréchet distance on the raw embeddings; depends on the encoder's scale, not comparable across "
    "methods (no interval).",
    "fd_class": "Class-conditional FD: mean over labels of the standardised FD / D between same-label source and site "
    "embeddings (separates stain shift from label-mix shift).",
    "sliced_w2": "Sliced 2-Wasserstein distance (not squared) between the standardised SAMPLES of source and site, "
    "exact 1-D W2 along random unit directions, root-mean-square over directions; no Gaussian assumption (no "
    "interval: every bootstrap draw would need a full re-sort).",
    "mmd": "Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with an RBF kernel exp(−‖a−b‖²/2σ²) on "
    "standardised embeddings, σ = median pairwise distance among source embeddings (one kernel per method, all "
    "sites); computed on a random subsample of eval.mmd_max_samples rows per site. Can be slightly negative; 0 = "
    "same distribution.",
    "top1": "Fraction of the site's tiles whose nearest source-site embedding (cosine, standardised) is the same tile.",
    "silhouette_batch": "scib-metrics silhouette_batch: within each label, 1 − |silhouette of the cell w.r.t. its "
    "site|, averaged per label then over labels (1 = sites fully mixed, 0 = separated). Per site: over that "
    "site's cells; summary: all cells. Computed with the sites jointly on a stratified subsample.",
    "ilisi": "scib-metrics ilisi_knn: median over cells of the inverse Simpson index of site labels among each "
    "cell's k nearest neighbours (Gaussian weights calibrated to perplexity k/3), scaled (median−1)/(sites−1): "
    "1 = every neighbourhood holds all sites evenly, 0 = one site only.",
    "kbet": "scib-metrics kbet acceptance rate: share of cells whose k-neighbourhood site counts pass a χ² test "
    "(level eval.kbet_alpha) against the global site frequencies; ≈ 1 − α for perfectly mixed sites. This is "
    "scib_metrics.kbet on a plain kNN graph, not kbet_per_label's diffusion-map graph.",
    "auc": "ROC AUC of a logistic probe (L2, fit on the source train embeddings less a group-disjoint validation "
    "part) on the site's held-out examples; near 0.5 means the label is lost, which also exposes a collapsed "
    "encoder that small distances would flatter.",
    "f1": "F1 of the probe at the threshold that maximises F1 on the SOURCE validation part (target labels are never "
    "used to pick it).",
    "balanced_accuracy": "Mean of sensitivity and specificity at the source-chosen threshold.",
    "brier": "Brier score mean((p − y)²) of the probe's P(y = 1); lower = better calibrated and sharper.",
    "ece": "Expected calibration error: Σ over 15 equal-width bins of P(y=1) of (bin share)·|observed positive "
    "rate − mean predicted P(y=1)|.",
    "auc_drop": "source_auc − mean_unseen_auc.",
    "intervals": "[lo, hi] = 95% interval from block-bootstrap replicates that resample groups (patients/regions, "
    "one draw shared by all sites so the same tissue stays paired; a site's own examples when no groups are "
    "known) with replacement: the replicates' 2.5–97.5% percentile spread around their median, placed around the "
    "estimate and clipped to the metric's range. The probe, kNN graph and kernel are held fixed (test-set "
    "uncertainty).",
    "n": "Number of held-out examples at the site.",
}
DETECTION_NOTES = {
    "detection_f1": "Point-detection F1 = 2TP/(2TP+FP+FN), scored as the MIDOG challenge scores mitotic figures: "
    "within each image (region), the tiles whose probe P(y=1) reaches the detection threshold become candidate "
    "points at their tile centres, greedy non-maximum suppression within eval.detection_radius px keeps the "
    "best-scoring of nearby candidates, and candidates in descending score order take the nearest unmatched "
    "ground truth (the centre of a label-1 tile) within the radius, each truth matched once. TP/FP/FN are pooled "
    "over the site's images (not a mean of per-image F1s); undefined for a site without label-1 tiles. The "
    "threshold maximises pooled detection F1 on the source validation images (the probe's validation part; the "
    "probe's own threshold when they hold no label-1 tile), so target labels never pick it. Intervals resample the bootstrap units (images when groups are images) with "
    "the matches held fixed.",
    "detection_precision": "TP/(TP+FP) of the same matches; undefined when nothing is detected.",
    "detection_recall": "TP/(TP+FN) of the same matches (share of label-1 tiles found); undefined without any.",
}


@dataclass(frozen=True)
class MethodEmbeddings:
    """One method's embeddings: the training split for the probe, held-out set over all sites."""

    train: np.ndarray  # (N_tr, D) training split (the source site, or the sites trained on), train regions
    train_labels: np.ndarray  # (N_tr,) in {0, 1}
    heldout: np.ndarray  # (M, D) all sites, held-out regions
    heldout_labels: np.ndarray  # (M,) in {0, 1}
    heldout_sites: np.ndarray  # (M,) int index into site_names
    heldout_tile_ids: np.ndarray | None = None  # (M,) same id = same tissue tile rendered at different sites
    train_groups: np.ndarray | None = None  # (N_tr,) patient/slide/region key: folds and bootstrap keep groups whole
    heldout_groups: np.ndarray | None = None  # (M,) same key space as train_groups
    train_sites: np.ndarray | None = None  # (N_tr,) site index of each train row; None = all the source site
    # Point detection (with settings.detection_radius > 0): top-left (y, x) of each tile within its image (its group)
    heldout_coords: np.ndarray | None = None  # (M, 2); needs train_coords, both groups and tile_size
    train_coords: np.ndarray | None = None  # (N_tr, 2): the validation images that pick the detection threshold
    tile_size: int | None = None  # tile edge in px: a tile's point is its centre, coords + tile_size / 2


def _validate(name: str, m: MethodEmbeddings, num_sites: int) -> None:
    """Raise ValueError naming the method and field for wrong shapes, NaN/inf, or out-of-range site ids."""
    for field in ("train", "heldout"):
        a = np.asarray(getattr(m, field))
        if a.ndim != 2:
            raise ValueError(f"method {name!r}: {field} must be (N, D); got shape {a.shape}.")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"method {name!r}: {field} embeddings contain NaN or inf; check the encoder/checkpoint.")
    if np.shape(m.train)[1] != np.shape(m.heldout)[1]:
        raise ValueError(f"method {name!r}: train dim {np.shape(m.train)[1]} != heldout dim {np.shape(m.heldout)[1]}.")
    per_row = {"train_labels": len(m.train), "heldout_labels": len(m.heldout), "heldout_sites": len(m.heldout),
               "heldout_tile_ids": len(m.heldout), "train_groups": len(m.train), "heldout_groups": len(m.heldout),
               "train_sites": len(m.train)}
    for field, n in per_row.items():
        a = getattr(m, field)
        if a is not None and np.shape(a) != (n,):
            raise ValueError(f"method {name!r}: {field} must have shape ({n},); got {np.shape(a)}.")
    for field, n in {"train_coords": len(m.train), "heldout_coords": len(m.heldout)}.items():
        a = getattr(m, field)
        if a is not None and (np.shape(a) != (n, 2) or not np.all(np.isfinite(a))):
            raise ValueError(f"method {name!r}: {field} must be finite (y, x) of shape ({n}, 2); got {np.shape(a)}.")
    if m.heldout_coords is not None:
        missing = [f for f in ("train_coords", "train_groups", "heldout_groups", "tile_size") if getattr(m, f) is None]
        if missing or m.tile_size <= 0:
            raise ValueError(f"method {name!r}: heldout_coords needs {missing or 'tile_size > 0'} too: points are "
                             "compared within an image (group), and the detection threshold is picked on the "
                             "source validation images.")
    for field in ("train_labels", "heldout_labels"):
        values = np.unique(np.asarray(getattr(m, field))).tolist()
        if not set(values) <= {0, 1}:
            raise ValueError(f"method {name!r}: {field} must be binary 0/1 proxy labels; got classes {values}.")
    for field in ("heldout_sites", "train_sites"):
        sites = np.asarray(getattr(m, field) if getattr(m, field) is not None else [])
        if sites.size and (sites.min() < 0 or sites.max() >= num_sites):
            raise ValueError(f"method {name!r}: {field} must index site_names (0..{num_sites - 1}); "
                             f"got range {sites.min()}..{sites.max()}.")


@dataclass(frozen=True)
class _Context:
    site_names: list[str]
    source_id: int
    unseen: list[str]  # sites in the summary means (not the source, not excluded)
    settings: Settings
    key: jax.Array
    seed: int


def _rng(ctx: _Context, *purpose: int) -> np.random.Generator:
    """A generator fixed by the evaluation key and a purpose, identical across methods (paired comparisons)."""
    return np.random.default_rng([ctx.seed, *purpose])


def _site_blocks(m: MethodEmbeddings, ctx: _Context) -> dict[int, tuple[np.ndarray, Blocks]]:
    """Rows and bootstrap blocks of every site (groups shared across sites as units when known and asked for)."""
    s = ctx.settings
    sites = np.asarray(m.heldout_sites)
    groups = np.asarray(m.heldout_groups) if s.bootstrap_unit == "group" and m.heldout_groups is not None else None
    blocks = bootstrap.make_blocks(sites, groups, max_blocks=s.bootstrap_blocks, replicates=s.bootstrap_replicates,
                                   rng=_rng(ctx, 0))
    return {i: (rows, blocks.subset(rows)) for i in range(len(ctx.site_names))
            for rows in [np.flatnonzero(sites == i)]}


def _separation(m: MethodEmbeddings, blocks: dict, ctx: _Context) -> tuple[dict[str, dict], dict[str, Estimate], dict]:
    """Distances of every site from the source and the joint batch-mixing metrics (values, reasons)."""
    s, names = ctx.settings, ctx.site_names
    src_rows = blocks[ctx.source_id][0]
    raw = np.asarray(m.heldout, np.float32)
    reason = None
    if len(src_rows) < s.min_site_samples:
        reason = f"source site has {len(src_rows)} held-out examples (< min_site_samples={s.min_site_samples})"
    elif np.sqrt(np.mean(np.var(raw[src_rows], axis=0, dtype=np.float64))) <= \
            1e-9 * max(float(np.sqrt(np.mean(raw[src_rows].astype(np.float64) ** 2))), 1e-30):
        reason = "source-site embeddings are constant (collapsed encoder): nothing to standardise distances by"
    if reason:
        return ({n: dict.fromkeys(DISTANCES + MIXING, reason) for n in names},
                dict.fromkeys(MIXING, Estimate(reason, "metric undefined")), {})
    per_site: dict[str, dict] = {n: {} for n in names}
    z = np.asarray(standardize(raw, raw[src_rows]))
    labels, ids = np.asarray(m.heldout_labels), m.heldout_tile_ids

    def site(i: int) -> Site:
        rows, b = blocks[i]
        return Site(z[rows], raw[rows], labels[rows], None if ids is None else np.asarray(ids)[rows], b)

    source = site(ctx.source_id)
    targets = {names[i]: site(i) for i in range(len(names))
               if i != ctx.source_id and len(blocks[i][0]) >= s.min_site_samples}
    distances = site_distances(source, targets, key=ctx.key, num_projections=s.num_projections,
                               min_n=s.min_site_samples, mmd_max_samples=s.mmd_max_samples, rng=_rng(ctx, 1))
    mixing_sites = {names[ctx.source_id]: source, **{n: targets[n] for n in ctx.unseen if n in targets}}
    mixed, joint, info = mixing_estimates(
        {n: (t.z, t.labels, t.blocks) for n, t in mixing_sites.items()},
        max_samples=s.integration_max_samples, lisi_neighbors=s.lisi_neighbors, kbet_neighbors=s.kbet_neighbors,
        kbet_alpha=s.kbet_alpha, rng=_rng(ctx, 2))
    for i, n in enumerate(names):
        n_rows = len(blocks[i][0])
        if i == ctx.source_id:
            per_site[n].update(dict.fromkeys(DISTANCES, "reference site (its distance to itself is 0 by definition)"))
        elif n_rows < s.min_site_samples:
            per_site[n].update(dict.fromkeys(DISTANCES, f"{n_rows} held-out examples "
                                                        f"(< min_site_samples={s.min_site_samples})"))
        else:
            per_site[n].update(distances[n])
        if n not in mixed:
            why = (f"{n_rows} held-out examples (< min_site_samples={s.min_site_samples})"
                   if n_rows < s.min_site_samples else "site excluded from summaries, so not in the joint mixing set")
            mixed[n] = dict.fromkeys(MIXING, why)
        per_site[n].update(mixed[n])
    return per_site, joint, info


def _fit_probe(m: MethodEmbeddings, ctx: _Context) -> tuple[transfer.SourceProbe | str, np.ndarray, np.ndarray | None]:
    """The probe fit on source train less a group-disjoint validation part (which picks its threshold), or why it
    is not fit; the validation rows; and the probe's P(y=1) on every held-out row (None without a probe)."""
    train, y_train = np.asarray(m.train), np.asarray(m.train_labels)
    groups = None if m.train_groups is None else np.asarray(m.train_groups)
    fit, val = transfer.split_validation(y_train, groups, ctx.settings.probe_val_fraction, _rng(ctx, 3))
    fitted = transfer.fit_source_probe(train[fit], y_train[fit], train[val], y_train[val], ctx.settings.probe_l2)
    if isinstance(fitted, str):
        return fitted, val, None
    return fitted, val, np.asarray(probe.predict_proba(fitted.params, np.asarray(m.heldout)))


def _per_site(blocks: dict, ctx: _Context, keys: tuple[str, ...],
              compute: Callable[[str, np.ndarray, Blocks], dict]) -> dict[str, dict]:
    """compute(site, rows, blocks) for each site with ≥ min_site_samples held-out rows; the others get `keys`
    undefined with the reason."""
    s, out = ctx.settings, {}
    for i, n in enumerate(ctx.site_names):
        rows, b = blocks[i]
        out[n] = (compute(n, rows, b) if len(rows) >= s.min_site_samples else dict.fromkeys(
            keys, f"{len(rows)} held-out examples (< min_site_samples={s.min_site_samples})"))
    return out


def _probe(m: MethodEmbeddings, blocks: dict, ctx: _Context, fitted: transfer.SourceProbe | str,
           scores: np.ndarray | None) -> tuple[dict[str, dict], dict, dict]:
    """Probe metrics at every site from its held-out `scores`, at the threshold chosen on source validation."""
    s, names = ctx.settings, ctx.site_names
    if isinstance(fitted, str):
        return {n: dict.fromkeys(PROBE_METRICS, fitted) for n in names}, {}, {"undefined": fitted}
    labels = np.asarray(m.heldout_labels)
    curves = {}

    def site(n: str, rows: np.ndarray, b: Blocks) -> dict:
        curves[n] = calibration.reliability(labels[rows], scores[rows], s.ece_bins)
        return calibration.binary_estimates(labels[rows], scores[rows], fitted.threshold, b, s.ece_bins)

    per_site = _per_site(blocks, ctx, PROBE_METRICS, site)
    info = {"threshold": fitted.threshold, "threshold_note": fitted.threshold_note, "n_fit": fitted.n_fit,
            "n_val": fitted.n_val, "validation": "group-disjoint" if m.train_groups is not None else "stratified rows"}
    return per_site, curves, info


def _detection(m: MethodEmbeddings, blocks: dict, ctx: _Context, fitted: transfer.SourceProbe | str,
               val: np.ndarray, scores: np.ndarray | None) -> tuple[dict[str, dict], dict]:
    """Detection F1/precision/recall at every site, the threshold maximising detection F1 on the probe's source
    validation images (never a held-out row)."""
    s, names = ctx.settings, ctx.site_names
    if isinstance(fitted, str):
        return {n: dict.fromkeys(DETECTION_METRICS, fitted) for n in names}, {"undefined": fitted}
    radius = s.detection_radius
    val_scores = probe.predict_proba(fitted.params, np.asarray(m.train)[val])
    val_labels, val_images = np.asarray(m.train_labels)[val], np.asarray(m.train_groups)[val]
    threshold, note = detection.choose_threshold(
        val_scores, val_labels, val_images, detection.tile_centres(np.asarray(m.train_coords)[val], m.tile_size),
        radius, fallback=fitted.threshold)
    labels, images = np.asarray(m.heldout_labels), np.asarray(m.heldout_groups)
    points = detection.tile_centres(m.heldout_coords, m.tile_size)
    per_site = _per_site(blocks, ctx, DETECTION_METRICS, lambda n, rows, b: detection.detection_f1(
        scores[rows], labels[rows], images[rows], points[rows], threshold=threshold, radius=radius, blocks=b))
    info = {"threshold": threshold, "threshold_note": note, "radius": radius,
            "validation_images": int(len(np.unique(val_images))), "validation_objects": int(np.sum(val_labels == 1))}
    return per_site, info


def _summary(per_site: dict[str, dict], joint: dict[str, Estimate], ctx: _Context,
             extra: tuple[str, ...] = ()) -> dict:
    """Means over unseen sites with intervals (also of the `extra` per-site metrics), source probe metrics, AUC
    drop and the joint mixing metrics."""
    as_estimate = {n: {k: v if isinstance(v, Estimate) else Estimate(v, "metric undefined") for k, v in d.items()}
                   for n, d in per_site.items()}
    values: dict[str, Estimate | str] = {}
    partial = {}
    for metric in DISTANCES + PROBE_METRICS + extra:
        values[f"mean_unseen_{metric}"], note = bootstrap.combine(
            {n: as_estimate[n][metric] for n in ctx.unseen}, lambda arrays: np.mean(arrays, axis=0))
        if note:
            partial[f"mean_unseen_{metric}"] = f"mean {note}"
    source = ctx.site_names[ctx.source_id]
    for metric in PROBE_METRICS:
        values[f"source_{metric}"] = as_estimate[source][metric]
    pair = {"source": values["source_auc"], "unseen": values["mean_unseen_auc"]}
    if any(isinstance(e.value, str) for e in pair.values()):
        values["auc_drop"] = "source_auc or mean_unseen_auc is undefined"
    else:
        values["auc_drop"], _ = bootstrap.combine(pair, lambda arrays: arrays[0] - arrays[1])
    values.update(joint)
    return {**bootstrap.as_json(values, SUMMARY_BOUNDS), "partial": partial}


def _protocols(m: MethodEmbeddings, ctx: _Context, exclude: Sequence[str]) -> dict:
    """The configured transfer protocols on train ∪ held-out rows (train rows at their own sites, if given)."""
    s = ctx.settings
    x = np.concatenate([np.asarray(m.train), np.asarray(m.heldout)])
    y = np.concatenate([np.asarray(m.train_labels), np.asarray(m.heldout_labels)])
    train_sites = np.full(len(m.train), ctx.source_id) if m.train_sites is None else np.asarray(m.train_sites)
    domains = np.concatenate([train_sites, np.asarray(m.heldout_sites)])
    groups = None if m.train_groups is None or m.heldout_groups is None else np.concatenate(
        [np.asarray(m.train_groups), np.asarray(m.heldout_groups)])
    return {name: protocol.run_protocol(
        name, x, y, domains, groups, domain_names=ctx.site_names, source=ctx.source_id, num_folds=s.protocol_folds,
        l2=s.probe_l2, num_bins=s.ece_bins, bootstrap_unit=s.bootstrap_unit, max_blocks=s.bootstrap_blocks,
        replicates=s.bootstrap_replicates, rng=_rng(ctx, 4, i), summary_exclude=exclude)
        for i, name in enumerate(s.protocols)}


def _evaluate_method(m: MethodEmbeddings, ctx: _Context, exclude: Sequence[str]) -> dict:
    """Everything the report shows for one method."""
    s = ctx.settings
    blocks = _site_blocks(m, ctx)
    distances, joint, mixing_info = _separation(m, blocks, ctx)
    fitted, val, scores = _fit_probe(m, ctx)
    probe_values, curves, probe_info = _probe(m, blocks, ctx, fitted, scores)
    detects = _detects(m, s)
    detected, detection_info = (_detection(m, blocks, ctx, fitted, val, scores) if detects
                                else ({n: {} for n in ctx.site_names}, None))
    keys = PER_SITE + (DETECTION_METRICS if detects else ())
    values = {n: {**distances[n], **probe_values[n], **detected[n]} for n in ctx.site_names}
    per_site = {n: {**bootstrap.as_json({k: values[n][k] for k in keys}, BOUNDS), "n": int(len(blocks[i][0]))}
                for i, n in enumerate(ctx.site_names)}
    groups = None if m.train_groups is None else np.asarray(m.train_groups)
    return {
        "per_site": per_site,
        "summary": _summary(values, joint, ctx, DETECTION_METRICS if detects else ()),
        "probe": probe_info,
        **({"detection": detection_info} if detects else {}),
        "reliability": curves,
        "mixing": mixing_info,
        "signature": signatures.sparse_signature(
            np.asarray(m.train), np.asarray(m.train_labels), groups, num_folds=s.signature_folds,
            num_lambdas=s.signature_lambdas, stability_rounds=s.signature_stability_rounds, rng=_rng(ctx, 5))
        if s.signature_folds else {"undefined": "skipped (eval.signature_folds = 0)"},
        "protocols": _protocols(m, ctx, exclude),
    }


def _detects(m: MethodEmbeddings, settings: Settings) -> bool:
    """Whether the method gets detection metrics: tile coordinates given and eval.detection_radius > 0."""
    return m.heldout_coords is not None and settings.detection_radius > 0


def evaluate_embeddings(
    methods: Mapping[str, MethodEmbeddings],
    *,
    site_names: Sequence[str],
    source_site: str,
    key: jax.Array,
    settings: Settings = Settings(),
    summary_exclude: Sequence[str] = (),
) -> dict:
    """Per method and site: separation from the source (FD, class FD, raw FD, sliced W2, MMD, top-1), batch mixing
    (silhouette-batch, iLISI, kBET), probe transfer (AUC, F1, balanced accuracy, Brier, ECE) with 95% intervals,
    plus the sparse signature and the transfer protocols; with tile coordinates and settings.detection_radius > 0,
    also point-detection F1, precision and recall (label-1 tiles as objects; see DETECTION_NOTES).

    Held-out embeddings are z-scored with the source site's held-out statistics. A value that cannot be
    computed (site below min_site_samples, one class, the source itself) is None with its reason under
    "undefined", never NaN; NaN/inf embeddings raise. Sites in `summary_exclude` are reported per site but
    left out of the unseen-site means and the joint mixing set (e.g. a split cut from different tissue,
    whose distance mixes biology with stain). All resampling is seeded by `key`, identically for every method.
    """
    site_names = list(site_names)
    if source_site not in site_names:
        raise ValueError(f"source_site {source_site!r} is not in site_names {site_names}.")
    if len(set(site_names)) != len(site_names):
        raise ValueError(f"site_names must be unique; got {site_names}.")
    for name, m in methods.items():
        _validate(name, m, len(site_names))
    ctx = _Context(site_names=site_names, source_id=site_names.index(source_site),
                   unseen=[n for n in site_names if n != source_site and n not in summary_exclude],
                   settings=settings, key=key, seed=int(np.asarray(jax.random.key_data(key)).ravel()[-1]))
    return {
        "schema_version": SCHEMA_VERSION,
        "source_site": source_site,
        "sites": site_names,
        "summary_excludes": list(summary_exclude),
        "settings": settings.to_json(),
        "bootstrap": {"replicates": settings.bootstrap_replicates, "level": bootstrap.LEVEL,
                      "unit": settings.bootstrap_unit, "max_blocks": settings.bootstrap_blocks,
                      "interval": bootstrap.METHOD},
        "methods": {name: _evaluate_method(m, ctx, summary_exclude) for name, m in methods.items()},
        "notes": {**NOTES, **(DETECTION_NOTES if any(_detects(m, settings) for m in methods.values()) else {})},
    }
