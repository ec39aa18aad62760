"""The evaluation suite: per method and site, separation from the source, batch mixing, probe transfer and
(with tile coordinates) point-detection F1, plus the transfer protocols and the sparse signature.

Numbers in (embeddings already computed), a JSON-serialisable, versioned metrics dict out; no model
code here. Every value is a number with a 95% block-bootstrap interval, a number reported without
one (the reason is recorded), or None with the reason it is undefined — never NaN. The metrics are the
families' (evaluate/families/): this module validates the inputs, runs each family for each method and
assembles per-site values, summaries, bounds and notes from the families' specs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import numpy as np

from lmc_jax.evaluate import families
from lmc_jax.evaluate.kernels import bootstrap
from lmc_jax.evaluate.kernels.bootstrap import Estimate
from lmc_jax.evaluate.families.inputs import Context, Inputs, MethodEmbeddings
from lmc_jax.evaluate.families.spec import SUMMARY_KINDS, Family, MetricSpec, Result
from lmc_jax.evaluate.settings import Settings

__all__ = ["SCHEMA_VERSION", "MethodEmbeddings", "evaluate_embeddings"]

SCHEMA_VERSION = 2
NOTES = {  # the suite's own notes; each metric's definition is its spec's note
    "intervals": "[lo, hi] = 95% interval from block-bootstrap replicates that resample groups (patients/regions, "
    "one draw shared by all sites so the same tissue stays paired; a site's own examples when no groups are "
    "known) with replacement: the replicates' 2.5–97.5% percentile spread around their median, placed around the "
    "estimate and clipped to the metric's range. The probe, kNN graph and kernel are held fixed (test-set "
    "uncertainty).",
    "n": "Number of held-out examples at the site.",
}


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


def _summary(specs: list[MetricSpec], per_site: dict[str, dict], joint: dict, ctx: Context) -> dict:
    """The specs' summary values, kind by kind (SUMMARY_KINDS): means over unseen sites with intervals, the
    source site's values, derived values, the families' joint values."""
    as_estimate = {n: {k: v if isinstance(v, Estimate) else Estimate(v, "metric undefined") for k, v in d.items()}
                   for n, d in per_site.items()}
    source = ctx.site_names[ctx.source_id]
    values: dict[str, Estimate | str] = {}
    partial = {}
    for kind in SUMMARY_KINDS:
        for spec in (s for s in specs if kind in s.summary):
            key = spec.summary_key(kind)
            if kind == "mean_unseen":
                values[key], note = bootstrap.combine({n: as_estimate[n][spec.key] for n in ctx.unseen},
                                                      lambda arrays: np.mean(arrays, axis=0))
                if note:
                    partial[key] = f"mean {note}"
            elif kind == "source":
                values[key] = as_estimate[source][spec.key]
            elif kind == "derived":
                values[key] = spec.derive(values)
            else:
                values[key] = joint[spec.key]
    bounds = {s.summary_key(kind): s.bounds for s in specs for kind in s.summary}
    return {**bootstrap.as_json(values, bounds), "partial": partial}


def _active(m: MethodEmbeddings, settings: Settings) -> tuple[Family, ...]:
    """The families this method gets (optional ones only when they apply, e.g. detection with coordinates)."""
    return tuple(f for f in families.FAMILIES if not f.optional or f.applies(m, settings))


def _checked(family: Family, result: Result) -> Result:
    """The result, if its per-site keys are exactly the family's per-site specs (a value without a spec would
    silently go missing from metrics.json; a spec without a value would fail later, less clearly)."""
    keys = set(family.per_site_keys())
    for site, values in result.per_site.items():
        if set(values) != keys:
            raise RuntimeError(f"family {family.name!r} at site {site!r}: computed {sorted(set(values) - keys)} "
                               f"without a spec, lacks {sorted(keys - set(values))}; its SPECS and evaluate differ.")
    return result


def _evaluate_method(m: MethodEmbeddings, ctx: Context) -> dict:
    """Everything the report shows for one method: each family's part, per site, in the summary and as entries."""
    inputs = Inputs(m, ctx)
    active = _active(m, ctx.settings)
    results = [_checked(f, f.evaluate(inputs)) for f in active]
    specs = families.all_specs(active)
    values = {n: {k: v for r in results for k, v in r.per_site.get(n, {}).items()} for n in ctx.site_names}
    bounds = {s.key: s.bounds for s in specs if s.per_site}
    per_site = {n: {**bootstrap.as_json({k: values[n][k] for k in bounds}, bounds), "n": inputs.size(i)}
                for i, n in enumerate(ctx.site_names)}
    joint = {k: v for r in results for k, v in r.joint.items()}
    entries = {k: v for r in results for k, v in r.entries.items()}
    order = [k for k in families.ENTRY_ORDER if k in entries] + [k for k in entries if k not in families.ENTRY_ORDER]
    return {"per_site": per_site, "summary": _summary(specs, values, joint, ctx), **{k: entries[k] for k in order}}


def _notes(ran: list[Family]) -> dict[str, str]:
    """Metric definitions of the families that ran, per-site metrics before summary-only ones within a family, then
    the suite's own notes, then those of the optional families that ran."""
    def of(group):
        return {s.key: s.note for f in group for s in sorted(f.specs, key=lambda s: not s.per_site)}

    return {**of([f for f in ran if not f.optional]), **NOTES, **of([f for f in ran if f.optional])}


def evaluate_embeddings(
    methods: Mapping[str, MethodEmbeddings],
    *,
    site_names: Sequence[str],
    source_site: str,
    key: jax.Array,
    settings: Settings,
    summary_exclude: Sequence[str] = (),
) -> dict:
    """Per method and site, every family in families.FAMILIES: separation from the source (FD, class FD, raw FD,
    sliced W2, MMD, top-1), batch mixing (silhouette-batch, iLISI, kBET), probe transfer (AUC, F1, balanced
    accuracy, Brier, ECE) with 95% intervals, the transfer protocols and the sparse signature; with tile
    coordinates and settings.detection_radius > 0, also point-detection F1, precision and recall (label-1 tiles as
    objects; see the detection family's notes).

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
    ctx = Context(site_names=site_names, source_id=site_names.index(source_site),
                  unseen=[n for n in site_names if n != source_site and n not in summary_exclude],
                  summary_exclude=tuple(summary_exclude), settings=settings, key=key,
                  seed=int(np.asarray(jax.random.key_data(key)).ravel()[-1]))
    ran = [f for f in families.FAMILIES if not f.optional or any(f.applies(m, settings) for m in methods.values())]
    return {
        "schema_version": SCHEMA_VERSION,
        "source_site": source_site,
        "sites": site_names,
        "summary_excludes": list(summary_exclude),
        "settings": settings.to_json(),
        "bootstrap": {"replicates": settings.bootstrap_replicates, "level": bootstrap.LEVEL,
                      "unit": settings.bootstrap_unit, "max_blocks": settings.bootstrap_blocks,
                      "interval": bootstrap.METHOD},
        "methods": {name: _evaluate_method(m, ctx) for name, m in methods.items()},
        "notes": _notes(ran),
    }
