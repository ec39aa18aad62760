"""The sparse signature of the source train embeddings (L1 probe, λ by grouped CV, fold Jaccard, stable dims)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import signatures
from lmc_jax.evaluate.families.inputs import Inputs
from lmc_jax.evaluate.families.layout import Section, Table, figures_present, fmt
from lmc_jax.evaluate.families.spec import Family, Result


def evaluate(inputs: Inputs) -> Result:
    m, s = inputs.m, inputs.ctx.settings
    if not s.signature_folds:
        return Result(entries={"signature": {"undefined": "skipped (eval.signature_folds = 0)"}})
    groups = None if m.train_groups is None else np.asarray(m.train_groups)
    return Result(entries={"signature": signatures.sparse_signature(
        np.asarray(m.train), np.asarray(m.train_labels), groups, num_folds=s.signature_folds,
        num_lambdas=s.signature_lambdas, stability_rounds=s.signature_stability_rounds, rng=inputs.ctx.rng(5),
        max_rows=s.signature_max_rows)})


def _table(metrics: Mapping) -> Table:
    rows = []
    for name, m in metrics["methods"].items():
        s = m.get("signature", {})
        if "undefined" in s and isinstance(s["undefined"], str):
            rows.append([name] + ["n/a"] * 6)
            continue
        stable = s.get("stable_dims")
        rows.append([name, f"{s['size']} / {s['num_dims']}", fmt(s.get("fold_jaccard")), fmt(s["lambda"]),
                     fmt(s["C"]), f"{s['folds']} ({'grouped' if s['grouped'] else 'random rows'})",
                     "—" if stable is None else f"{len(stable)}: " + ", ".join(map(str, stable[:10]))
                     + (" …" if len(stable) > 10 else "")])
    return Table("Sparse signatures of the source train embeddings",
                 ["method", "size / D", "fold Jaccard ↑", "λ", "sklearn C", "CV folds", "stable dims (≥ 60%)"], rows)


def sections(metrics: Mapping, figure_names: Sequence[str]) -> list[Section]:
    return [Section("Sparse embedding signatures",
                    ["L1 logistic probe on the source train embeddings; λ minimises the grouped cross-validated "
                     "log-loss; the signature is the set of dimensions with non-zero weight. Fold Jaccard = mean "
                     "pairwise |A∩B|/|A∪B| of the folds' signatures; stable dims are selected in ≥ 60% of "
                     "half-sample refits."],
                    [_table(metrics)], figures_present(("signatures",), figure_names), [])]


FAMILY = Family("signatures", (), evaluate, sections=sections)
