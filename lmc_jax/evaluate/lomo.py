"""Leave-one-magnification-out (LOMO) evaluation: per (model, held-out magnification) metrics, signatures, report.

The evaluation/report layer of the BreaKHis magnification-invariance study. The driver trains one model per
fold (patient-disjoint: test, validation and fit patients never overlap) and hands each fold's predictions and
frozen embeddings over as a `FoldInputs`; nothing here trains an encoder or sees the train loop.

Per fold (`fold_result`):
- Decision: the F1-optimal threshold on SOURCE validation rows (`calibration.f1_threshold`), never on the test
  rows; 0.5 (`transfer.DEFAULT_THRESHOLD`) with a note when validation cannot pick one.
- Test metrics on the held-out magnification: AUC, F1, balanced accuracy, Brier, ECE (`calibration.binary_estimates`)
  with 95% intervals from a bootstrap whose units are PATIENTS (`bootstrap.make_blocks(groups=patients)`).
- Signature at matched AUC (`matched_signature`): see `SIGNATURE_RULE`.
- Domain alignment (`domain_alignment`): a fresh post-hoc multinomial probe of the source magnification from the
  frozen features; see `DOMAIN_PROBE`.
- Cross-magnification retrieval (`cross_site_retrieval`), when the data set pairs each location's tiles across
  magnifications: does a location's held-out-magnification tile find itself among the source ones; see `RETRIEVAL`.

Per model (`model_result`): every fold with bootstrap replicates drawn once over the pooled patients of all folds
(the same resampled patients in every fold, as `protocol.run_protocol` does across domains), so the mean and the
worst fold get intervals (`protocol.mean_and_worst`); cross-fold signature Jaccard for every pair of folds.
`evaluate` runs every model; `table_markdown`, `plot` and `write_report` turn its dict into lomo.md/png/json.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Collection, Mapping, Sequence
from itertools import combinations
from typing import NamedTuple

import numpy as np
from etils import epath
from matplotlib.figure import Figure

from lmc_jax.evaluate import figures
from lmc_jax.evaluate.kernels import bootstrap, probe, signatures
from lmc_jax.evaluate.kernels.multinomial import fit_multinomial, ids, predict_multinomial
from lmc_jax.evaluate.kernels.calibration import BOUNDS, METRICS, binary_estimates, f1_threshold
from lmc_jax.evaluate.kernels.padding import bucket
from lmc_jax.evaluate.kernels.protocol import mean_and_worst
from lmc_jax.evaluate.kernels.separation import reference_stats
from lmc_jax.evaluate.kernels.transfer import DEFAULT_THRESHOLD

LABELS = {"auc": "AUC", "f1": "F1", "balanced_accuracy": "balanced acc.", "brier": "Brier", "ece": "ECE"}
SIGNATURE_RULE = (
    "On the fold's source fit embeddings (z-scored with their own statistics), an L1-logistic path over "
    "λ = λ_max·geomspace(1, lambda_ratio, num_lambdas) (signatures.l1_logistic_path). Each path point is scored by "
    "ROC AUC on the source validation rows (other patients). The dense reference is an L2 logistic probe on all "
    "dimensions (probe.fit_logistic, same l2 as the probes). The signature is the path point with the FEWEST "
    "non-zero dimensions (ties: the largest λ) whose validation AUC is ≥ dense AUC − tolerance; if none reaches "
    "it the size is undefined (the reason names the best path point).")
DOMAIN_PROBE = (
    "A fresh multinomial (softmax) logistic probe of the source magnification from the frozen features, z-scored "
    "with the fit rows' statistics, mean cross-entropy + (l2/2)·‖W‖² (intercepts free), fitted by damped Newton "
    "on the fit rows and scored (accuracy) on the held-out source validation rows; interval from the patient "
    "bootstrap of the validation rows. Chance = the largest share of one magnification among the scored rows "
    "(the best any constant guess can do). Lower = more magnification-invariant features.")
RETRIEVAL = (
    "Label-free, for data sets that see every location at every magnification: each test location's tile at the "
    "held-out magnification queries the same test patients' tiles at one source magnification (cosine similarity "
    "of the frozen features); a hit = the query's own location among its k most similar. Per query the hits are "
    "averaged over the source magnifications; the interval comes from the patient bootstrap of the test rows. "
    "Chance = k / gallery size (mean over sources). Higher = one place seen at two magnifications maps to one "
    "point: the magnification manifold is compacted.")


class FoldInputs(NamedTuple):
    """One (model, fold): what the driver hands over. Arrays are row-aligned within each split.

    test = held-out magnification, test patients; val = source magnifications, validation patients;
    fit = source magnifications, training patients. Embeddings (x_*) may be None: the signature is then
    undefined. Domain labels (d_*, e.g. "100X") may be None: the domain probe is then undefined.
    """

    held_out: str  # name of the held-out magnification, e.g. "40X"
    y: np.ndarray  # (N,) 0/1 labels of the test rows
    p: np.ndarray  # (N,) model P(y = 1) on the test rows
    patients: np.ndarray  # (N,) patient id of each test row
    y_val: np.ndarray
    p_val: np.ndarray
    patients_val: np.ndarray
    x_test: np.ndarray | None = None  # (N, D)
    x_val: np.ndarray | None = None  # (N_val, D)
    x_fit: np.ndarray | None = None  # (N_fit, D)
    y_fit: np.ndarray | None = None
    patients_fit: np.ndarray | None = None
    d_fit: np.ndarray | None = None  # (N_fit,) source magnification of each fit row
    d_val: np.ndarray | None = None  # (N_val,) source magnification of each validation row
    domain_head_accuracy: float | None = None  # the model's own domain head on the validation rows, if it has one
    loc_test: np.ndarray | None = None  # (N,) location id of each test row (paired data sets only)
    x_gallery: np.ndarray | None = None  # (G, D) the test patients' tiles at the source magnifications
    loc_gallery: np.ndarray | None = None  # (G,) their location ids
    d_gallery: np.ndarray | None = None  # (G,) their magnification


class LomoSettings(NamedTuple):
    """Knobs of the LOMO evaluation (defaults are what the report uses)."""

    replicates: int = 1000  # patient-bootstrap replicates; 0 disables intervals
    max_blocks: int = 200  # bootstrap units above this are merged at random (BreaKHis has 82 patients)
    num_bins: int = 15  # equal-width bins of the ECE
    tolerance: float = 0.005  # signature: validation AUC within this of the dense AUC
    num_lambdas: int = 30  # points on the L1 path
    lambda_ratio: float = 1e-3  # the path runs from λ_max down to λ_max·lambda_ratio
    l2: float = 1e-2  # L2 strength of the dense reference probe and of the domain probe
    path_max_iter: int = 1000  # solver steps per λ (signatures._path)
    path_tol: float = 1e-4  # solver stop: max |Δθ| per step (z-scored units)
    domain_max_iter: int = 50  # Newton steps of the domain probe
    retrieval_k: tuple[int, ...] = (1, 10)  # cross-magnification retrieval: hit among the k most similar
    seed: int = 0  # bootstrap draws (the same for every model: paired comparisons on equal patient sets)


# ---------------------------------------------------------------------------------------------- small helpers

def auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """Tie-aware ROC AUC (probe.block_auc with one block); None when a class is missing."""
    one = bootstrap.Blocks(ids=np.zeros(len(y), np.int64), num=1, unit="example", counts=np.zeros((0, 1)))
    value = float(probe.block_auc(probe.auc_block_pairs(one, np.asarray(y), score), one.ones())[0])
    return value if np.isfinite(value) else None


def _threshold(y_val: np.ndarray, p_val: np.ndarray) -> tuple[float, str | None]:
    """F1-optimal threshold on the source validation rows, or 0.5 and why."""
    if not len(y_val):
        return DEFAULT_THRESHOLD, f"no source validation rows; threshold {DEFAULT_THRESHOLD}"
    chosen = f1_threshold(y_val, p_val)
    if isinstance(chosen, probe.Undefined):
        return DEFAULT_THRESHOLD, f"source {chosen.reason}; threshold {DEFAULT_THRESHOLD}"
    return float(chosen), None


def _blocks(patients: np.ndarray, strata: np.ndarray, settings: LomoSettings, rng: np.random.Generator
            ) -> bootstrap.Blocks:
    """Patient bootstrap blocks (one count vector shared by every stratum/fold)."""
    return bootstrap.make_blocks(strata, ids(patients), max_blocks=settings.max_blocks,
                                 replicates=settings.replicates, rng=rng)


# ------------------------------------------------------------------------------------------------- signatures

def matched_signature(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                      tolerance: float = 0.005, num_lambdas: int = 30, lambda_ratio: float = 1e-3,
                      l2: float = 1e-2, max_iter: int = 1000, tol: float = 1e-4,
                      x_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> dict:
    """The smallest L1 signature whose validation AUC matches the dense probe's (rule: `SIGNATURE_RULE`).

    Returns a JSON-ready dict: size, dims, num_dims, lambda, matched_auc (validation AUC of the signature),
    dense_auc (validation AUC of the L2 probe on all dims), test_auc / dense_test_auc (both probes on the
    held-out test rows, when given), the path (lambdas, sizes, val_auc) and "undefined": {key: reason}.
    """
    x_fit, x_val = np.asarray(x_fit, np.float32), np.asarray(x_val, np.float32)
    y_fit, y_val = np.asarray(y_fit), np.asarray(y_val)
    base = {"size": None, "dims": [], "num_dims": int(x_fit.shape[1]), "tolerance": tolerance,
            "lambda": None, "matched_auc": None, "dense_auc": None, "test_auc": None, "dense_test_auc": None}
    for name, labels in (("fit", y_fit), ("validation", y_val)):
        if np.unique(labels).tolist() != [0, 1]:
            return {**base, "undefined": {"size": f"source {name} labels are {np.unique(labels).tolist()}; "
                                                  "need both 0 and 1"}}
    top = signatures.lambda_max(x_fit, y_fit)
    if top <= 0:
        return {**base, "undefined": {"size": "every dimension is constant on the fit rows (λ_max = 0)"}}
    lambdas = top * np.geomspace(1.0, lambda_ratio, num_lambdas)
    w, b = signatures.l1_logistic_path(x_fit, y_fit, lambdas, max_iter=max_iter, tol=tol, pad_to=bucket(len(y_fit)))
    mean, std = reference_stats(x_fit)  # the statistics the path was z-scored with

    def scores(x):
        return ((np.asarray(x, np.float64) - mean) / std) @ w.T.astype(np.float64) + b

    val_auc = [auc(y_val, s) for s in scores(x_val).T]
    sizes = (w != 0).sum(axis=1)
    dense = probe.fit_logistic(x_fit, y_fit, l2)
    dense_auc = auc(y_val, probe.predict_proba(dense, x_val))
    out = {**base, "dense_auc": dense_auc, "undefined": {},
           "path": {"lambdas": lambdas.tolist(), "sizes": sizes.tolist(), "val_auc": val_auc}}
    ok = [i for i, a in enumerate(val_auc) if a is not None and a >= dense_auc - tolerance]
    if not ok:
        best = int(np.argmax([-1.0 if a is None else a for a in val_auc]))
        out["undefined"]["size"] = (f"no λ on the path reaches dense AUC {dense_auc:.3f} − {tolerance} (best: "
                                    f"{val_auc[best]:.3f} with {sizes[best]} dims); lower lambda_ratio")
        return out
    chosen = min(ok, key=lambda i: (sizes[i], i))  # fewest dims, then the largest λ (earliest on the path)
    out.update(size=int(sizes[chosen]), dims=np.flatnonzero(w[chosen]).tolist(), matched_auc=val_auc[chosen],
               **{"lambda": float(lambdas[chosen])})
    if x_test is not None and y_test is not None and len(y_test):
        out["test_auc"] = auc(np.asarray(y_test), scores(x_test)[:, chosen])
        out["dense_test_auc"] = auc(np.asarray(y_test), probe.predict_proba(dense, x_test))
        if out["test_auc"] is None:
            out["undefined"]["test_auc"] = out["undefined"]["dense_test_auc"] = "test rows have one class"
    return out


def cross_fold_jaccard(signatures_by_fold: Mapping[str, Collection[int]]) -> dict[str, float | None]:
    """{"A vs B": |A∩B|/|A∪B|} for every pair of folds in the given order (None when both are empty)."""
    sets = {name: set(int(d) for d in dims) for name, dims in signatures_by_fold.items()}
    return {f"{a} vs {b}": signatures.jaccard(sets[a], sets[b]) for a, b in combinations(sets, 2)}


# ---------------------------------------------------------------------------------------------- domain probe

def domain_probe(x_fit: np.ndarray, d_fit: np.ndarray, x_test: np.ndarray, d_test: np.ndarray,
                 l2: float = 1e-2) -> float:
    """Accuracy on (x_test, d_test) of a multinomial L2 probe of the domain fitted on (x_fit, d_fit)."""
    return float(np.mean(predict_multinomial(fit_multinomial(x_fit, d_fit, l2), x_test) == ids(d_test)))


def chance_level(d_test: np.ndarray) -> float:
    """The largest share of one domain among the scored rows (best accuracy of a constant guess)."""
    _, counts = np.unique(ids(d_test), return_counts=True)
    return float(counts.max() / counts.sum())


def domain_alignment(fold: FoldInputs, blocks: bootstrap.Blocks, settings: LomoSettings
                     ) -> tuple[dict, bootstrap.Estimate | None]:
    """(JSON dict {probe_accuracy, chance, head_accuracy, num_domains, ci, no_ci, undefined}, accuracy estimate).

    `blocks` are the validation rows' patient blocks.
    """
    head = (float(fold.domain_head_accuracy) if fold.domain_head_accuracy is not None
            else "the model has no domain head (or its accuracy was not given)")
    missing = [n for n in ("x_fit", "d_fit", "x_val", "d_val") if getattr(fold, n) is None]
    reason = (f"not given: {', '.join(missing)}" if missing
              else None if len(np.unique(ids(fold.d_fit))) >= 2 and len(fold.d_val)
              else "fewer than 2 source magnifications among the fit rows, or no validation rows")
    if reason:
        return {**bootstrap.as_json({"probe_accuracy": reason, "chance": reason, "head_accuracy": head}),
                "num_domains": None}, None
    params = fit_multinomial(fold.x_fit, fold.d_fit, settings.l2, max_iter=settings.domain_max_iter)
    correct = (predict_multinomial(params, fold.x_val) == ids(fold.d_val)).astype(np.float64)
    sums = bootstrap.block_sums(blocks, np.column_stack([correct, np.ones_like(correct)]))
    accuracy = bootstrap.estimate(blocks, lambda c: bootstrap.ratio(c @ sums[:, 0], c @ sums[:, 1]), "no rows")
    out = bootstrap.as_json({"probe_accuracy": accuracy, "chance": chance_level(fold.d_val), "head_accuracy": head},
                            {"probe_accuracy": (0.0, 1.0)})
    return {**out, "num_domains": len(params.classes), "domains": params.classes.tolist()}, accuracy


# ------------------------------------------------------------------------------------------- retrieval

def retrieval_hits(x_query: np.ndarray, loc_query: np.ndarray, x_gallery: np.ndarray, loc_gallery: np.ndarray,
                   k: int) -> np.ndarray:
    """(N,) 1.0 where a query's own location is among its k most cosine-similar gallery rows, else 0.0; NaN for
    a query whose location the gallery lacks (nothing to find)."""
    rank = own_rank(x_query, loc_query, x_gallery, loc_gallery)
    return np.where(np.isfinite(rank), (rank < k).astype(np.float64), np.nan)


def own_rank(x_query: np.ndarray, loc_query: np.ndarray, x_gallery: np.ndarray, loc_gallery: np.ndarray
             ) -> np.ndarray:
    """(N,) how many other locations' gallery rows are strictly more cosine-similar to each query than its own
    location's best row (ties favour no row); NaN where the gallery lacks the query's location."""
    q = np.asarray(x_query, np.float64)
    g = np.asarray(x_gallery, np.float64)
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    g = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    similarity = q @ g.T  # (N, G)
    own = ids(loc_query)[:, None] == ids(loc_gallery)[None, :]
    present = own.any(axis=1)
    own_best = np.where(own, similarity, -np.inf).max(axis=1)  # a location with several gallery rows: its best
    better = ((similarity > own_best[:, None]) & ~own).sum(axis=1)
    return np.where(present, better.astype(np.float64), np.nan)


def cross_site_retrieval(fold: FoldInputs, blocks: bootstrap.Blocks, settings: LomoSettings
                         ) -> tuple[dict, dict[int, bootstrap.Estimate]]:
    """(JSON dict {top_<k>, chance_<k>, per_source, ci, no_ci, undefined}, {k: estimate}); `blocks` = test rows'."""
    names = [f"top_{k}" for k in settings.retrieval_k]
    missing = [n for n in ("loc_test", "x_test", "x_gallery", "loc_gallery", "d_gallery") if getattr(fold, n) is None]
    if missing:
        reason = ("the data set does not pair tiles across magnifications (config.lomo.paired)"
                  if fold.loc_test is None else f"not given: {', '.join(missing)}")
        keys = names + [f"chance_{k}" for k in settings.retrieval_k]
        return {**bootstrap.as_json(dict.fromkeys(keys, reason)), "per_source": {}}, {}
    domains = ids(fold.d_gallery)
    sources = np.unique(domains)
    ranks, sizes = {}, {}  # per source magnification: each query's rank (similarities computed once), gallery rows
    for source in sources:
        rows = domains == source
        ranks[source] = own_rank(fold.x_test, fold.loc_test, fold.x_gallery[rows], fold.loc_gallery[rows])
        sizes[source] = int(rows.sum())
    out, estimates, per_source = {}, {}, {}
    for k, name in zip(settings.retrieval_k, names):
        hits = [np.where(np.isfinite(ranks[s]), (ranks[s] < k).astype(np.float64), np.nan) for s in sources]
        chances = [min(1.0, k / sizes[s]) for s in sources]
        for source, hit in zip(sources, hits):
            per_source.setdefault(str(source), {})[name] = (float(np.nanmean(hit)) if np.isfinite(hit).any()
                                                             else None)
        mean_hit = np.nanmean(np.stack(hits), axis=0) if len(sources) else np.full(len(fold.loc_test), np.nan)
        valid = np.isfinite(mean_hit)
        sums = bootstrap.block_sums(blocks, np.column_stack([np.where(valid, mean_hit, 0.0), valid.astype(float)]))
        estimates[k] = bootstrap.estimate(blocks, lambda c: bootstrap.ratio(c @ sums[:, 0], c @ sums[:, 1]),
                                          "no test location has a tile at a source magnification")
        out[name] = estimates[k]
        out[f"chance_{k}"] = float(np.mean(chances)) if chances else "no gallery rows"
    result = bootstrap.as_json(out, {name: (0.0, 1.0) for name in names})
    return {**result, "per_source": per_source}, estimates


# ------------------------------------------------------------------------------------------------ fold / model

def _check(fold: FoldInputs) -> None:
    """ValueError naming the field whose length disagrees with its split's labels."""
    splits = {"y": ("p", "patients", "x_test"), "y_val": ("p_val", "patients_val", "x_val", "d_val"),
              "y_fit": ("x_fit", "patients_fit", "d_fit")}
    if fold.loc_test is not None and len(fold.loc_test) != len(fold.y):
        raise ValueError(f"FoldInputs({fold.held_out!r}).loc_test has {len(fold.loc_test)} rows but y has "
                         f"{len(fold.y)}; pass row-aligned arrays of the same split.")
    gallery = [getattr(fold, n) for n in ("x_gallery", "loc_gallery", "d_gallery")]
    if all(g is not None for g in gallery) and len({len(g) for g in gallery}) != 1:
        raise ValueError(f"FoldInputs({fold.held_out!r}): x_gallery, loc_gallery and d_gallery have "
                         f"{[len(g) for g in gallery]} rows; they must be row-aligned.")
    for labels, fields in splits.items():
        n = None if getattr(fold, labels) is None else len(getattr(fold, labels))
        for name in fields:
            value = getattr(fold, name)
            if value is not None and n is not None and len(value) != n:
                raise ValueError(f"FoldInputs({fold.held_out!r}).{name} has {len(value)} rows but {labels} has {n}; "
                                 "pass row-aligned arrays of the same split.")


def _fold(fold: FoldInputs, test_blocks: bootstrap.Blocks, val_blocks: bootstrap.Blocks, settings: LomoSettings
          ) -> tuple[dict, dict[str, bootstrap.Estimate], bootstrap.Estimate | None, dict[int, bootstrap.Estimate]]:
    """The fold's JSON dict, its metric estimates, its domain-probe estimate and its retrieval estimates (for
    pooling across folds)."""
    _check(fold)
    y, p = np.asarray(fold.y), np.asarray(fold.p, np.float64)
    threshold, note = _threshold(np.asarray(fold.y_val), np.asarray(fold.p_val, np.float64))
    estimates = binary_estimates(y, p, threshold, test_blocks, settings.num_bins)
    if fold.x_fit is None or fold.x_val is None or fold.y_fit is None:
        signature = {"size": None, "dims": [], "undefined": {"size": "embeddings (x_fit, y_fit, x_val) not given"}}
    else:
        signature = matched_signature(fold.x_fit, fold.y_fit, fold.x_val, fold.y_val, tolerance=settings.tolerance,
                                      num_lambdas=settings.num_lambdas, lambda_ratio=settings.lambda_ratio,
                                      l2=settings.l2, max_iter=settings.path_max_iter, tol=settings.path_tol,
                                      x_test=fold.x_test, y_test=y)
    domain, accuracy = domain_alignment(fold, val_blocks, settings)
    retrieval, hits = cross_site_retrieval(fold, test_blocks, settings)

    def count(a):
        return None if a is None else int(len(a))

    def unique(a):
        return None if a is None else int(len(np.unique(ids(a))))

    out = {
        "held_out": fold.held_out,
        "n": {"test": count(fold.y), "test_patients": unique(fold.patients), "val": count(fold.y_val),
              "val_patients": unique(fold.patients_val), "fit": count(fold.y_fit),
              "fit_patients": unique(fold.patients_fit)},
        "threshold": threshold, "threshold_note": note,
        "metrics": bootstrap.as_json(estimates, BOUNDS),
        "signature": signature,
        "domain": domain,
        "retrieval": retrieval,
    }
    return out, estimates, accuracy, hits


def fold_result(fold: FoldInputs, settings: LomoSettings = LomoSettings()) -> dict:
    """One (model, fold) alone, JSON-ready (bootstrap over this fold's patients only); layout as in `model_result`."""
    rng = np.random.default_rng(settings.seed)
    test_blocks = _blocks(fold.patients, np.zeros(len(fold.y)), settings, rng)
    val_blocks = _blocks(fold.patients_val, np.zeros(len(fold.y_val)), settings, rng)
    return _fold(fold, test_blocks, val_blocks, settings)[0]


def model_result(folds: Sequence[FoldInputs], settings: LomoSettings = LomoSettings()) -> dict:
    """Every fold of one model with a patient bootstrap pooled across folds, the mean/worst fold and Jaccards.

    Returns {"folds": {held_out: fold dict}, "overall": {...}}. A fold dict is
      {"held_out", "n": {test, test_patients, val, val_patients, fit, fit_patients}, "threshold", "threshold_note",
       "metrics": {auc, f1, balanced_accuracy, brier, ece, "ci": {m: [lo, hi]}, "no_ci": {m: why}, "undefined": {m: why}},
       "signature": (see `matched_signature`), "domain": (see `domain_alignment`)}.
    "overall" holds mean_<metric> / worst_<metric> with "ci" / "no_ci" / "undefined" / "partial" (protocol's
    summary), "signature_size" {mean, min, max, per_fold, undefined}, "jaccard" {pairs, mean, undefined} and
    "domain" {mean_probe_accuracy, mean_chance, mean_head_accuracy, ci, no_ci, undefined}.
    """
    names = [f.held_out for f in folds]
    if len(set(names)) != len(names):
        raise ValueError(f"model_result: held-out magnifications must be distinct; got {names}.")
    rng = np.random.default_rng(settings.seed)
    fold_of_test = np.concatenate([np.full(len(f.y), k) for k, f in enumerate(folds)])
    fold_of_val = np.concatenate([np.full(len(f.y_val), k) for k, f in enumerate(folds)])
    test_blocks = _blocks(np.concatenate([ids(f.patients) for f in folds]), fold_of_test, settings, rng)
    val_blocks = _blocks(np.concatenate([ids(f.patients_val) for f in folds]), fold_of_val, settings, rng)
    results, targets, accuracies, retrievals = {}, {}, {}, {}
    for k, fold in enumerate(folds):
        results[fold.held_out], targets[fold.held_out], accuracy, retrievals[fold.held_out] = _fold(
            fold, test_blocks.subset(np.flatnonzero(fold_of_test == k)),
            val_blocks.subset(np.flatnonzero(fold_of_val == k)), settings)
        accuracies[fold.held_out] = accuracy if accuracy is not None else bootstrap.Estimate(
            results[fold.held_out]["domain"]["undefined"]["probe_accuracy"], "metric undefined")
    overall = _overall(results, targets, accuracies)
    overall["retrieval"] = _retrieval_overall(results, retrievals, settings)
    return {"folds": results, "overall": overall}


def _retrieval_overall(results: dict[str, dict], retrievals: dict[str, dict[int, bootstrap.Estimate]],
                       settings: LomoSettings) -> dict:
    """Mean over the folds with a retrieval score of top_<k> (pooled intervals) and of chance_<k>."""
    out, partial = {}, {}
    for k in settings.retrieval_k:
        name = f"top_{k}"
        per_fold = {fold: got[k] if k in got else bootstrap.Estimate(results[fold]["retrieval"]["undefined"][name],
                                                                        "metric undefined")
                    for fold, got in retrievals.items()}
        out[f"mean_{name}"], note = _fold_mean(per_fold)
        out[f"mean_chance_{k}"] = _section_mean(results, "retrieval", f"chance_{k}")
        if note:
            partial[f"mean_{name}"] = note
    bounds = {f"mean_top_{k}": (0.0, 1.0) for k in settings.retrieval_k}
    return {**bootstrap.as_json(out, bounds), "partial": partial}


def _fold_mean(per_fold: dict[str, bootstrap.Estimate]) -> tuple[bootstrap.Estimate, str | None]:
    """Mean over the folds where defined (pooled replicates), naming the folds' own reasons when none is; and
    the note of which folds were left out."""
    combined, note = bootstrap.combine(per_fold, lambda arrays: np.mean(arrays, axis=0))
    if isinstance(combined.value, str):  # name the folds' own reasons, not only that every fold lacks a value
        reasons = "; ".join(dict.fromkeys(str(e.value) for e in per_fold.values()))
        combined = bootstrap.Estimate(f"undefined in every fold: {reasons}", combined.replicates)
    return combined, note


def _section_mean(results: dict[str, dict], section: str, key: str) -> float | str:
    """Mean over folds of `results[fold][section][key]` where defined, or why it is undefined in every fold."""
    defined = [r[section][key] for r in results.values() if r[section][key] is not None]
    if defined:
        return float(np.mean(defined))
    reasons = dict.fromkeys(str(r[section]["undefined"].get(key, "not computed")) for r in results.values())
    return f"undefined in every fold: {'; '.join(reasons)}"


def _overall(results: dict[str, dict], targets: dict, accuracies: dict[str, bootstrap.Estimate]) -> dict:
    """Mean/worst metrics with pooled intervals, signature sizes, cross-fold Jaccards and domain alignment."""
    overall = mean_and_worst(targets)
    sizes = {k: r["signature"]["size"] for k, r in results.items()}
    defined = [s for s in sizes.values() if s is not None]
    size_undefined = {k: r["signature"]["undefined"]["size"] for k, r in results.items() if sizes[k] is None}
    overall["signature_size"] = {
        "mean": float(np.mean(defined)) if defined else None, "min": min(defined) if defined else None,
        "max": max(defined) if defined else None, "per_fold": sizes, "undefined": size_undefined}
    pairs = cross_fold_jaccard({k: r["signature"]["dims"] for k, r in results.items() if sizes[k] is not None})
    values = [v for v in pairs.values() if v is not None]
    why = {}
    if not values:
        why["mean"] = ("fewer than 2 folds have a signature" if len(defined) < 2
                       else "every signature is empty (no label signal)")
    overall["jaccard"] = {"pairs": pairs, "mean": float(np.mean(values)) if values else None, "undefined": why}
    combined, note = _fold_mean(accuracies)
    domain = {
        "mean_probe_accuracy": combined,
        "mean_chance": _section_mean(results, "domain", "chance"),
        "mean_head_accuracy": _section_mean(results, "domain", "head_accuracy"),
    }
    overall["domain"] = {**bootstrap.as_json(domain, {"mean_probe_accuracy": (0.0, 1.0)}),
                         "partial": {"mean_probe_accuracy": note} if note else {}}
    return overall


def evaluate(models: Mapping[str, Sequence[FoldInputs]], settings: LomoSettings = LomoSettings()) -> dict:
    """All models (table rows in the mapping's order), JSON-ready.

    {"models": {name: model_result}, "order": [model names], "folds": [held-out names, first-seen order],
     "settings": {...}, "definitions": {...}}.
    """
    folds: list[str] = []
    for model_folds in models.values():
        folds += [f.held_out for f in model_folds if f.held_out not in folds]
    return {"models": {name: model_result(model_folds, settings) for name, model_folds in models.items()},
            "order": list(models), "folds": folds, "settings": settings._asdict(), "definitions": definitions()}


def definitions() -> dict[str, str]:
    """What each reported number means (written into lomo.md and lomo.json)."""
    return {
        "threshold": "F1-optimal threshold on the SOURCE validation rows (calibration.f1_threshold); "
                     f"{DEFAULT_THRESHOLD} when validation has one class.",
        "metrics": "AUC (tie-aware), F1 and balanced accuracy of p ≥ threshold, Brier = mean (p − y)², ECE over "
                   "equal-width bins, on the held-out magnification's test patients.",
        "intervals": f"95% {bootstrap.METHOD}; the units are PATIENTS (a patient's rows move together). Per model "
                     "the resampled patients are shared across folds, so the mean and worst fold get intervals.",
        "signature": SIGNATURE_RULE,
        "jaccard": "|A ∩ B| / |A ∪ B| of two folds' signature dimensions; the main table shows the mean over pairs.",
        "domain_probe": DOMAIN_PROBE,
        "retrieval": RETRIEVAL,
    }


# ------------------------------------------------------------------------------------------------------ tables

class _Notes:
    """Numbered footnotes, one per distinct reason."""

    def __init__(self) -> None:
        self.reasons: dict[str, int] = {}

    def mark(self, reason: str) -> str:
        number = self.reasons.setdefault(str(reason), len(self.reasons) + 1)
        return f"[^{number}]"

    def lines(self) -> list[str]:
        return [f"[^{n}]: {reason}" for reason, n in self.reasons.items()]


def _number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def _cell(entry: Mapping, key: str, notes: _Notes, digits: int = 3) -> str:
    """'0.930 [0.900, 0.950]' from an as_json dict; undefined → 'n/a[^k]'; no interval → '0.930[^k]'."""
    value = entry.get(key)
    if value is None or not np.isfinite(value):
        return "n/a" + notes.mark(entry.get("undefined", {}).get(key, "not computed"))
    if key in entry.get("ci", {}):
        lo, hi = entry["ci"][key]
        return f"{_number(value, digits)} [{_number(lo, digits)}, {_number(hi, digits)}]"
    no_ci = entry.get("no_ci", {}).get(key)
    return _number(value, digits) + (notes.mark(f"no interval: {no_ci}") if no_ci else "")


def _plain(value: float | int | None, reason: str, notes: _Notes, digits: int = 3) -> str:
    """A value without interval: integers as they are, floats with `digits`; None → 'n/a[^k]' (reason)."""
    if value is None:
        return "n/a" + notes.mark(reason)
    return str(value) if isinstance(value, (int, np.integer)) else _number(value, digits)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def row(cells):
        return "| " + " | ".join(cells) + " |"

    return [row(header), row([":---"] + ["---:"] * (len(header) - 1)), *(row(r) for r in rows)]


def table_markdown(results: Mapping, digits: int = 3) -> str:
    """The report's tables (markdown): overall (mean over folds), worst fold, Jaccard pairs, one per held-out fold.

    Rows are models in `results["order"]`; undefined values read 'n/a' with a footnote giving the reason.
    """
    notes = _Notes()
    order, folds = results["order"], results["folds"]
    paired = any(r["retrieval"].get(f"top_{k}") is not None for name in order
                 for r in results["models"][name]["folds"].values() for k in results["settings"]["retrieval_k"])
    ks = list(results["settings"]["retrieval_k"])
    k_last = ks[-1]
    metric_heads = [LABELS[m] for m in METRICS]
    lines = [f"## Mean over the {len(folds)} held-out magnifications ({', '.join(folds)})", "",
             "95% intervals: patient bootstrap, the same resampled patients in every fold.", ""]
    rows = []
    for name in order:
        o = results["models"][name]["overall"]
        size, dom = o["signature_size"], o["domain"]
        size_cell = _plain(size["mean"], "; ".join(f"{k}: {v}" for k, v in size["undefined"].items()), notes, 1)
        if size["mean"] is not None and size["min"] != size["max"]:
            size_cell += f" ({size['min']}–{size['max']})"
        if size["mean"] is not None and size["undefined"]:
            size_cell += notes.mark("mean over the folds with a signature; undefined at " + "; ".join(
                f"{k}: {v}" for k, v in size["undefined"].items()))
        jac = o["jaccard"]
        domain_cell = _cell(dom, "mean_probe_accuracy", notes, digits)
        if dom.get("mean_chance") is not None:
            domain_cell += f" (chance {_number(dom['mean_chance'], 2)})"
        row = [name, *(_cell(o, f"mean_{m}", notes, digits) for m in METRICS), size_cell,
               _plain(jac["mean"], jac["undefined"].get("mean", ""), notes, 2), domain_cell]
        if paired:
            row.append(_retrieval_cell(o["retrieval"], f"mean_top_{k_last}", f"mean_chance_{k_last}", notes, digits))
        rows.append(row)
    lines += _table(["model", *metric_heads, "signature size", "Jaccard (mean over fold pairs)", "domain-probe acc.",
                     *([f"same-location top-{k_last} across magnifications"] if paired else [])], rows) + [""]
    lines += ["## Worst held-out magnification (lowest AUC/F1/balanced acc., highest Brier/ECE)", ""]
    lines += _table(["model", *metric_heads],
                    [[name, *(_cell(results["models"][name]["overall"], f"worst_{m}", notes, digits)
                              for m in METRICS)] for name in order]) + [""]
    pairs = list(dict.fromkeys(p for name in order for p in results["models"][name]["overall"]["jaccard"]["pairs"]))
    if pairs:
        lines += ["## Cross-fold signature Jaccard", ""]
        rows = []
        for name in order:
            got = results["models"][name]["overall"]["jaccard"]["pairs"]
            rows.append([name, *(_plain(got[p], "both signatures empty", notes, 2) if p in got
                                 else "n/a" + notes.mark("a fold of the pair has no signature") for p in pairs)])
        lines += _table(["model", *pairs], rows) + [""]
    fold_header = ["model", *metric_heads, "threshold (source val.)", "signature size", "signature / dense val. AUC",
                   "domain-probe acc.", "domain-head acc.", *([f"same-location top-{k}" for k in ks] if paired else []),
                   "test rows (patients)"]
    for fold in folds:
        lines += [f"## Held out: {fold}", ""]
        rows = []
        for name in order:
            r = results["models"][name]["folds"].get(fold)
            if r is None:
                rows.append([name] + ["n/a" + notes.mark(f"model {name} has no fold {fold}")] * (len(fold_header) - 1))
                continue
            sig, dom, n = r["signature"], r["domain"], r["n"]
            threshold = _number(r["threshold"], 3) + (notes.mark(r["threshold_note"]) if r["threshold_note"] else "")
            matched = (f"{_number(sig['matched_auc'], 3)} / {_number(sig['dense_auc'], 3)}"
                       if sig.get("matched_auc") is not None
                       else "n/a" + notes.mark(sig["undefined"].get("size", "not computed")))
            domain_cell = _cell(dom, "probe_accuracy", notes, digits)
            if dom.get("chance") is not None:
                domain_cell += f" (chance {_number(dom['chance'], 2)})"
            row = [name, *(_cell(r["metrics"], m, notes, digits) for m in METRICS), threshold,
                   _plain(sig["size"], sig["undefined"].get("size", ""), notes),
                   matched, domain_cell, _cell(dom, "head_accuracy", notes, digits)]
            if paired:
                row += [_retrieval_cell(r["retrieval"], f"top_{k}", f"chance_{k}", notes, digits) for k in ks]
            rows.append(row + [f"{n['test']} ({n['test_patients']})"])
        lines += _table(fold_header, rows) + [""]
    return "\n".join(lines + notes.lines()) + "\n"


def _retrieval_cell(entry: Mapping, key: str, chance_key: str, notes: _Notes, digits: int) -> str:
    """'0.420 [0.300, 0.510] (chance 0.03)': a retrieval score and its chance level."""
    cell = _cell(entry, key, notes, digits)
    chance = entry.get(chance_key)
    return cell + (f" (chance {_number(chance, 2)})" if isinstance(chance, float) else "")


def render_markdown(results: Mapping) -> str:
    """lomo.md: title, the tables, the definitions and the figure."""
    parts = ["# Leave-one-magnification-out evaluation", "", table_markdown(results), "## Definitions", ""]
    parts += [f"- **{k}**: {v}" for k, v in results["definitions"].items()]
    return "\n".join(parts + ["", "![AUC and Brier per held-out magnification](lomo.png)", ""])


# -------------------------------------------------------------------------------------------------------- plot

def plot(results: Mapping, path: epath.PathLike) -> epath.Path:
    """PNG: AUC (with 95% intervals) and Brier per held-out magnification per model, plus the mean over folds."""
    order, folds = results["order"], list(results["folds"])
    columns = folds + ["mean over folds"]
    fig = Figure(figsize=(max(8.5, 1.4 * len(columns) + 4.5), 8.0), dpi=figures.DPI, layout="constrained")
    axes = fig.subplots(2, 1)
    for ax, metric, ylabel in ((axes[0], "auc", "ROC AUC"), (axes[1], "brier", "Brier score (lower is better)")):
        methods = {}
        for name in order:
            model = results["models"][name]
            entries = {fold: r["metrics"] for fold, r in model["folds"].items()}
            o, key = model["overall"], f"mean_{metric}"
            if o.get(key) is not None:
                entries["mean over folds"] = {metric: o[key], **({"ci": {metric: o["ci"][key]}} if key in o["ci"]
                                                                 else {})}
            methods[name] = entries
        figures.dodged_points(ax, methods, columns, metric)
        if metric == "auc":
            ax.axhline(0.5, color="grey", linestyle=":", linewidth=1, label="chance")
        ax.axvline(len(folds) - 0.5, color="grey", linewidth=0.8)
        ax.set_xticks(range(len(columns)), columns)
        ax.set(title=f"{ylabel} on the held-out magnification's test patients (95% patient-bootstrap intervals)",
               xlabel="held-out magnification", ylabel=ylabel)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), title="model",
                  title_fontsize="small")
        ax.grid(axis="y", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    path = epath.Path(path)
    path.write_bytes(buffer.getvalue())
    return path


# ------------------------------------------------------------------------------------------------------ report

def write_report(results: Mapping, directory: epath.PathLike) -> dict[str, epath.Path]:
    """Write lomo.json (every number), lomo.md (the tables) and lomo.png into `directory`; return their paths.

    All three are rendered to hidden temporary files first and only then renamed into place, so a failure
    leaves no partial or mismatched report (the old one, if any, stays whole).
    """
    out = epath.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    final = {"json": out / "lomo.json", "md": out / "lomo.md", "png": out / "lomo.png"}
    staged = {k: out / f".{p.name}.partial-{tag}" for k, p in final.items()}
    try:
        staged["json"].write_text(json.dumps(results, indent=2, ensure_ascii=False, allow_nan=False) + "\n", "utf-8")
        staged["md"].write_text(render_markdown(results), "utf-8")
        plot(results, staged["png"])
        for kind in ("json", "md", "png"):
            staged[kind].replace(final[kind])
    finally:
        for p in staged.values():
            if p.exists():
                p.unlink()
    return final
