"""Probe transfer and calibration: a logistic probe fit on the source, scored at every site (AUC, F1, balanced
accuracy, Brier, ECE) at the threshold chosen on source validation, and the source-to-unseen AUC drop."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, calibration
from lmc_jax.evaluate.kernels.bootstrap import Blocks, Estimate
from lmc_jax.evaluate.families.inputs import Inputs
from lmc_jax.evaluate.families.layout import Table, figures_present, fmt
from lmc_jax.evaluate.families.spec import UNIT, Family, Intro, MetricSpec, Result, SummaryTable

SECTION = "Probe transfer per site"
SUMMARY = SummaryTable("Probe transfer (means over unseen sites)", unseen_prefix="unseen ")
_BOTH, _UNSEEN = ("mean_unseen", "source"), ("mean_unseen",)


def _auc_drop(summary: Mapping[str, Estimate]) -> Estimate | str:
    """source_auc − mean_unseen_auc, with an interval from the paired replicates."""
    pair = {"source": summary["source_auc"], "unseen": summary["mean_unseen_auc"]}
    if any(isinstance(e.value, str) for e in pair.values()):
        return "source_auc or mean_unseen_auc is undefined"
    return bootstrap.combine(pair, lambda arrays: arrays[0] - arrays[1])[0]


SPECS = (
    MetricSpec(
        "auc", "AUC", "ROC AUC of a logistic probe (L2, fit on the source train embeddings less a group-disjoint "
        "validation part) on the site's held-out examples; near 0.5 means the label is lost, which also exposes a "
        "collapsed encoder that small distances would flatter.",
        title="Probe ROC AUC (probe fit on source-site train embeddings)", direction=1, bounds=UNIT,
        summary=_BOTH, columns=("source", "mean_unseen"), console=("source", "mean_unseen"), protocol="ROC AUC"),
    MetricSpec("auc_drop", "AUC drop", "source_auc − mean_unseen_auc.", direction=-1, bounds=(-1.0, 1.0),
               per_site=False, summary=("derived",), columns=("derived",), console=("derived",), derive=_auc_drop),
    MetricSpec(
        "f1", "F1", "F1 of the probe at the threshold that maximises F1 on the SOURCE validation part (target labels "
        "are never used to pick it).",
        title="Probe F1 at the threshold chosen on source validation", direction=1, bounds=UNIT, summary=_BOTH,
        columns=_UNSEEN, protocol="F1"),
    MetricSpec(
        "balanced_accuracy", "bal. acc.", "Mean of sensitivity and specificity at the source-chosen threshold.",
        title="Probe balanced accuracy at the source-chosen threshold", direction=1, bounds=UNIT, summary=_BOTH,
        columns=_UNSEEN),
    MetricSpec(
        "brier", "Brier", "Brier score mean((p − y)²) of the probe's P(y = 1); lower = better calibrated and sharper.",
        title="Probe Brier score (lower = better)", direction=-1, bounds=UNIT, summary=_BOTH, columns=_UNSEEN),
    MetricSpec(
        "ece", "ECE", "Expected calibration error: Σ over 15 equal-width bins of P(y=1) of (bin share)·|observed "
        "positive rate − mean predicted P(y=1)|.",
        title="Probe expected calibration error, 15 bins (lower = better)", direction=-1, bounds=UNIT, summary=_BOTH,
        columns=_UNSEEN, protocol="ECE"),
)
KEYS = tuple(s.key for s in SPECS if s.per_site)


def evaluate(inputs: Inputs) -> Result:
    """Probe metrics at every site from its held-out scores, at the threshold chosen on source validation."""
    m, s, p = inputs.m, inputs.ctx.settings, inputs.probe
    if isinstance(p.fitted, str):
        return Result({n: dict.fromkeys(KEYS, p.fitted) for n in inputs.ctx.site_names},
                      entries={"probe": {"undefined": p.fitted}, "reliability": {}})
    labels, curves = np.asarray(m.heldout_labels), {}

    def site(n: str, rows: np.ndarray, b: Blocks) -> dict:
        curves[n] = calibration.reliability(labels[rows], p.scores[rows], s.ece_bins)
        return calibration.binary_estimates(labels[rows], p.scores[rows], p.fitted.threshold, b, s.ece_bins)

    per_site = inputs.each_site(KEYS, site)
    fitted = p.fitted
    info = {"threshold": fitted.threshold, "threshold_note": fitted.threshold_note, "n_fit": fitted.n_fit,
            "n_val": fitted.n_val, "validation": "group-disjoint" if m.train_groups is not None else "stratified rows"}
    return Result(per_site, entries={"probe": info, "reliability": curves})


def _threshold_table(metrics: Mapping) -> Table:
    rows = []
    for name, m in metrics["methods"].items():
        p = m.get("probe", {})
        if "threshold" not in p:
            rows.append([name, "n/a", "n/a", "n/a", p.get("undefined", "")])
            continue
        rows.append([name, fmt(p["threshold"]), str(p["n_fit"]), str(p["n_val"]),
                     p["validation"] + ("; " + p["threshold_note"] if p.get("threshold_note") else "")])
    return Table("Probe decision threshold (maximises F1 on SOURCE validation; never sees a target label)",
                 ["method", "threshold", "fit examples", "validation examples", "validation split"], rows)


def intro(metrics: Mapping, figure_names: Sequence[str]) -> Intro:
    return Intro(tables=[_threshold_table(metrics)], figures=figures_present(("auc", "reliability"), figure_names))


FAMILY = Family("probe", SPECS, evaluate, section=SECTION, summary_table=SUMMARY, intro=intro)
