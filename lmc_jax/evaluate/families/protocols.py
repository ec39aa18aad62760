"""The transfer protocols (cross_site, leave_one_domain_out) on train ∪ held-out rows with patient-disjoint folds;
their tables show the probe metrics whose specs name them for the protocols (`MetricSpec.protocol`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import protocol
from lmc_jax.evaluate.families import probe as probe_family
from lmc_jax.evaluate.families.inputs import Inputs
from lmc_jax.evaluate.families.layout import Section, Table, cell
from lmc_jax.evaluate.families.spec import Family, Result

TITLES = {  # report section per protocol, in this order
    "cross_site": "Cross-site transfer: probe fit on the source domain, tested on every domain "
                  "(patient-disjoint folds)",
    "leave_one_domain_out": "Leave one domain out: probe fit on all other domains, tested on the held-out one "
                            "(patient-disjoint folds)",
}


def evaluate(inputs: Inputs) -> Result:
    """The configured protocols (train rows at their own sites, if given)."""
    m, ctx, s = inputs.m, inputs.ctx, inputs.ctx.settings
    x = np.concatenate([np.asarray(m.train), np.asarray(m.heldout)])
    y = np.concatenate([np.asarray(m.train_labels), np.asarray(m.heldout_labels)])
    train_sites = np.full(len(m.train), ctx.source_id) if m.train_sites is None else np.asarray(m.train_sites)
    domains = np.concatenate([train_sites, np.asarray(m.heldout_sites)])
    groups = None if m.train_groups is None or m.heldout_groups is None else np.concatenate(
        [np.asarray(m.train_groups), np.asarray(m.heldout_groups)])
    return Result(entries={"protocols": {name: protocol.run_protocol(
        name, x, y, domains, groups, domain_names=ctx.site_names, source=ctx.source_id, num_folds=s.protocol_folds,
        l2=s.probe_l2, num_bins=s.ece_bins, bootstrap_unit=s.bootstrap_unit, max_blocks=s.bootstrap_blocks,
        replicates=s.bootstrap_replicates, rng=ctx.rng(4, i), summary_exclude=ctx.summary_exclude,
        max_fit_rows=s.protocol_max_fit_rows)
        for i, name in enumerate(s.protocols)}})


def _tables(metrics: Mapping, name: str) -> list[Table]:
    """Per-domain tables of the protocol metrics and their mean/worst over target domains, one row per method."""
    results = {m: v["protocols"][name] for m, v in metrics["methods"].items() if name in v.get("protocols", {})}
    if not results or all("per_domain" not in r for r in results.values()):
        return []
    specs = [spec for spec in probe_family.SPECS if spec.protocol]
    tables = []
    for spec in specs:
        rows = [[m] + [cell(r.get("per_domain", {}).get(d, {}), spec.key) for d in metrics["sites"]]
                for m, r in results.items()]
        tables.append(Table(f"{spec.protocol} per test domain", ["method"] + list(metrics["sites"]), rows))
    keys = [(f"{how}_{spec.key}", f"{how} {spec.label}") for spec in specs for how in ("mean", "worst")]
    rows = [[m] + [cell(r.get("summary", {}), k) for k, _ in keys] for m, r in results.items()]
    tables.append(Table("Over target domains", ["method"] + [t for _, t in keys], rows))
    return tables


def sections(metrics: Mapping, figure_names: Sequence[str]) -> list[Section]:
    """One section per protocol that some method ran."""
    return [Section(title, [], tables, [], []) for name, title in TITLES.items() if (tables := _tables(metrics, name))]


FAMILY = Family("protocols", (), evaluate, sections=sections)
