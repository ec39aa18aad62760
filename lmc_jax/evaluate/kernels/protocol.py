"""Transfer protocols with patient-disjoint folds: `cross_site` and `leave_one_domain_out`.

Groups (patients, slides, regions: whatever the data set says shares tissue) are split into K
folds over ALL domains, so the same tissue rendered in another domain never sits on both sides.
Fold k tests on groups in fold k, picks the F1 threshold on fold k+1 (source domains only) and
fits on the rest. Every test row is predicted exactly once; metrics are computed per domain on the
pooled out-of-fold predictions (each with its fold's threshold), with a group bootstrap.

- cross_site: fit and validate on the source domain; test on every domain (the source row is the
  in-domain reference on held-out patients).
- leave_one_domain_out: for each domain d, fit and validate on all other domains; test on d.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, probe
from lmc_jax.evaluate.kernels.calibration import BOUNDS, METRICS, binary_estimates
from lmc_jax.evaluate.kernels.transfer import fit_source_probe

PROTOCOLS = ("cross_site", "leave_one_domain_out")
MIN_GROUPS = 3  # a fit, a validation and a test fold


def group_folds(groups: np.ndarray, num_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold id per row: whole groups, largest first (random order among equal sizes), each to the emptiest fold."""
    names, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    order = sorted(rng.permutation(len(names)), key=lambda g: -sizes[g])
    load, fold_of_group = np.zeros(num_folds), np.zeros(len(names), np.int64)
    for g in order:
        fold_of_group[g] = int(np.argmin(load))
        load[fold_of_group[g]] += sizes[g]
    return fold_of_group[inverse]


def _plans(protocol: str, domains: np.ndarray, folds: np.ndarray, num_folds: int, source: int,
           domain_names: Sequence[str]):
    """(description, fit mask, validation mask, test mask) for every probe the protocol fits."""
    held = [int(d) for d in np.unique(domains)] if protocol == "leave_one_domain_out" else [None]
    for d in held:
        train_domain = (domains == source) if d is None else (domains != d)
        for k in range(num_folds):
            val_fold = (k + 1) % num_folds
            fit = train_domain & (folds != k) & (folds != val_fold)
            test = (folds == k) if d is None else (domains == d) & (folds == k)
            where = f"fold {k}" + ("" if d is None else f", held-out domain {domain_names[d]}")
            yield where, fit, train_domain & (folds == val_fold), test


def run_protocol(protocol: str, x: np.ndarray, y: np.ndarray, domains: np.ndarray, groups: np.ndarray | None, *,
                 domain_names: Sequence[str], source: int, num_folds: int, l2: float, num_bins: int,
                 bootstrap_unit: str, max_blocks: int, replicates: int, rng: np.random.Generator,
                 summary_exclude: Sequence[str] = (), max_fit_rows: int = 0) -> dict:
    """Per-domain AUC/F1/balanced accuracy/Brier/ECE with CIs for one protocol, or {"undefined": reason}.

    `domains` index `domain_names`; `source` is the cross_site training domain. The summary holds the
    mean and the worst value over target domains (not the cross_site source, not `summary_exclude`).
    Rows whose fold could not be fit (a class missing) stay unscored; the notes name those folds.
    A fit set of more than `max_fit_rows` rows (> 0) is replaced by a uniform random subset of that many of its
    rows, drawn from `rng` (the probe's cost then stops growing with N; validation and test rows are all used).
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose from {PROTOCOLS}.")
    if groups is None:
        return {"undefined": "no group key (patient/slide/region) for patient-disjoint folds"}
    num_groups = len(np.unique(groups))
    if num_groups < MIN_GROUPS:
        return {"undefined": f"{num_groups} groups; patient-disjoint fit/validation/test folds need ≥ {MIN_GROUPS}"}
    k = min(num_folds, num_groups)
    folds = group_folds(groups, k, rng)
    scores, thresholds = np.full(len(y), np.nan), np.full(len(y), np.nan)
    notes, previous = [], None
    for description, fit, val, test in _plans(protocol, domains, folds, k, source, domain_names):
        if not test.any():
            continue
        fit = np.flatnonzero(fit)
        if 0 < max_fit_rows < len(fit):
            fit = np.sort(rng.choice(fit, max_fit_rows, replace=False))
        fitted = fit_source_probe(x[fit], y[fit], x[val], y[val], l2, init=previous)
        if isinstance(fitted, str):
            notes.append(f"{description}: {fitted}")
            continue
        previous = fitted.params  # folds overlap in most of their data: warm-start the next fit
        if fitted.threshold_note:
            notes.append(f"{description}: {fitted.threshold_note}")
        scores[test] = np.asarray(probe.predict_proba(fitted.params, x[test]))
        thresholds[test] = fitted.threshold
    per_domain, targets = {}, {}
    blocks = bootstrap.make_blocks(domains, groups if bootstrap_unit == "group" else None, max_blocks=max_blocks,
                                   replicates=replicates, rng=rng)
    for d, name in enumerate(domain_names):
        rows = np.flatnonzero((domains == d) & np.isfinite(scores))
        if not rows.size:
            if np.any(domains == d):
                per_domain[name] = {"n": 0, "undefined": {"all": "no fold could score this domain"}}
            continue
        estimates = binary_estimates(y[rows], scores[rows], thresholds[rows], blocks.subset(rows), num_bins)
        per_domain[name] = {**bootstrap.as_json(estimates, BOUNDS), "n": int(rows.size)}
        if name not in summary_exclude and not (protocol == "cross_site" and d == source):
            targets[name] = estimates
    return {"folds": k, "source": domain_names[source] if protocol == "cross_site" else None,
            "max_fit_rows": max_fit_rows, "per_domain": per_domain, "summary": mean_and_worst(targets), "notes": notes}


def mean_and_worst(targets: dict[str, dict[str, bootstrap.Estimate]]) -> dict:
    """Mean and worst (lowest AUC/F1/balanced accuracy, highest Brier/ECE) over target domains, with CIs."""
    values: dict[str, bootstrap.Estimate] = {}
    partial = {}
    for metric in METRICS:
        estimates = {name: t[metric] for name, t in targets.items()}
        worst = np.max if metric in ("brier", "ece") else np.min
        for key, how in ((f"mean_{metric}", np.mean), (f"worst_{metric}", worst)):
            values[key], note = bootstrap.combine(estimates, lambda arrays, f=how: f(arrays, axis=0))
            if note:
                partial[key] = note
    bounds = {f"{how}_{m}": b for m, b in BOUNDS.items() for how in ("mean", "worst")}
    return {**bootstrap.as_json(values, bounds), "partial": partial}
