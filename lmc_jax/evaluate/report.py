"""Turn the suite's metrics dict into files: metrics.json, report.md, report.html and the PNG figures.

The report is built once as a list of sections (text, tables, figure names) and rendered twice:
as markdown and as a self-contained HTML page with the figures embedded.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from lmc_jax.evaluate import figures, html_report
from lmc_jax.evaluate.domain_shift import NO_CI_RAW, NO_CI_SLICED

SEPARATION_COLUMNS = (
    ("mean_unseen_fd", "FD/D ↓"),
    ("mean_unseen_fd_class", "class FD/D ↓"),
    ("mean_unseen_sliced_w2", "sliced W2 ↓"),
    ("mean_unseen_mmd", "MMD² ↓"),
    ("mean_unseen_top1", "same-tile top-1 ↑"),
    ("silhouette_batch", "silhouette-batch ↑"),
    ("ilisi", "iLISI ↑"),
    ("kbet", "kBET acceptance ↑"),
)
TRANSFER_COLUMNS = (
    ("source_auc", "source AUC ↑"),
    ("mean_unseen_auc", "unseen AUC ↑"),
    ("auc_drop", "AUC drop ↓"),
    ("mean_unseen_f1", "unseen F1 ↑"),
    ("mean_unseen_balanced_accuracy", "unseen bal. acc. ↑"),
    ("mean_unseen_brier", "unseen Brier ↓"),
    ("mean_unseen_ece", "unseen ECE ↓"),
    ("mean_unseen_detection_f1", "unseen detection F1 ↑"),
    ("mean_unseen_detection_precision", "unseen detection precision ↑"),
    ("mean_unseen_detection_recall", "unseen detection recall ↑"),
)
CONSOLE_COLUMNS = (
    ("mean_unseen_fd", "mean unseen FD/D ↓"),
    ("mean_unseen_mmd", "mean unseen MMD² ↓"),
    ("mean_unseen_top1", "mean unseen same-tile top-1 ↑"),
    ("ilisi", "iLISI ↑"),
    ("kbet", "kBET ↑"),
    ("source_auc", "source AUC ↑"),
    ("mean_unseen_auc", "mean unseen AUC ↑"),
    ("auc_drop", "AUC drop ↓"),
)
SITE_TABLES = (
    ("fd", "Fréchet distance / D to the source site (source-standardised embeddings; lower = closer)"),
    ("fd_class", "Class-conditional Fréchet distance / D to the source site"),
    ("sliced_w2", "Sliced 2-Wasserstein distance to the source site (standardised samples)"),
    ("mmd", "Unbiased RBF MMD² to the source site (standardised; median-heuristic kernel)"),
    ("top1", "Same-tile top-1 retrieval against the source site"),
    ("fd_raw", "Fréchet distance on raw embeddings (scale-dependent; for reference only)"),
    ("silhouette_batch", "Silhouette-batch (1 − |ASW| by site within label; 1 = mixed), this site's cells"),
    ("ilisi", "iLISI (scaled; 1 = neighbourhoods hold every site evenly), this site's cells"),
    ("kbet", "kBET acceptance rate, this site's cells"),
    ("auc", "Probe ROC AUC (probe fit on source-site train embeddings)"),
    ("f1", "Probe F1 at the threshold chosen on source validation"),
    ("balanced_accuracy", "Probe balanced accuracy at the source-chosen threshold"),
    ("brier", "Probe Brier score (lower = better)"),
    ("ece", "Probe expected calibration error, 15 bins (lower = better)"),
)
DETECTION_TABLES = (
    ("detection_f1", "Detection F1 = 2TP/(2TP+FP+FN), TP/FP/FN pooled over the site's images"),
    ("detection_precision", "Detection precision TP/(TP+FP)"),
    ("detection_recall", "Detection recall TP/(TP+FN) (share of label-1 objects found)"),
)
PROTOCOL_TITLES = {
    "cross_site": "Cross-site transfer: probe fit on the source domain, tested on every domain (patient-disjoint folds)",
    "leave_one_domain_out": "Leave one domain out: probe fit on all other domains, tested on the held-out one "
                            "(patient-disjoint folds)",
}

HOW_TO_READ = (
    "**How to read this.** Every distance compares a site's held-out embeddings with the source site's, after "
    "z-scoring all of them with the source site's held-out mean and std, so an encoder cannot look invariant by "
    "shrinking its outputs. Lower FD / sliced W2 / MMD² = the site's embeddings sit closer to the source's = more "
    "stain/scanner invariant; higher silhouette-batch / iLISI / kBET = sites mix better in local neighbourhoods. "
    "FD is the squared 2-Wasserstein distance between Gaussian fits, divided by the embedding width D (the "
    "source's total variance after z-scoring) so encoders of any width compare; sliced W2 is a (non-squared) "
    "distance on the samples themselves, so the two are on different scales. A collapsed encoder also scores "
    "low distances: the probe AUC is the guard — invariance is only worth something while the AUC stays high at "
    "the source and drops little at unseen sites. Brackets are 95% bootstrap intervals; n/a = undefined (reasons "
    "listed at the end)."
)


class Table(NamedTuple):
    """A titled table of already formatted cells; the first column is left-aligned."""

    title: str
    header: list[str]
    rows: list[list[str]]


class Section(NamedTuple):
    """A report section: heading, paragraphs, tables, figure names (keys of the figure paths), bullets."""

    title: str
    paragraphs: list[str]
    tables: list[Table]
    figures: list[str]
    bullets: list[str]


def _fmt(value: float | None) -> str:
    """Three significant digits; n/a for an undefined value."""
    return "n/a" if value is None else f"{value:#.3g}"


def _cell(entry: Mapping, key: str) -> str:
    """A value with its 95% interval when there is one: '0.912 [0.883, 0.936]'."""
    value = entry.get(key)
    ci = entry.get("ci", {}).get(key)
    return _fmt(value) + (f" [{_fmt(ci[0])}, {_fmt(ci[1])}]" if value is not None and ci else "")


def _defined(entries: list[Mapping], key: str) -> bool:
    return any(e.get(key) is not None for e in entries)


def _method_table(metrics: Mapping, columns, title: str, *, with_ci: bool = True) -> Table:
    """One row per method over summary columns that are defined somewhere (the rest are dropped)."""
    summaries = [m["summary"] for m in metrics["methods"].values()]
    cols = [(k, t) for k, t in columns if _defined(summaries, k)]
    rows = [[name] + [(_cell if with_ci else lambda e, k: _fmt(e.get(k)))(m["summary"], k) for k, _ in cols]
            for name, m in metrics["methods"].items()]
    return Table(title, ["method"] + [t for _, t in cols], rows)


def _site_table(metrics: Mapping, key: str, title: str) -> Table | None:
    """Method × site table of one per-site metric (source column marked), or None if undefined everywhere."""
    source = metrics["source_site"]
    entries = [s for m in metrics["methods"].values() for s in m["per_site"].values()]
    if not _defined(entries, key):
        return None
    header = ["method"] + [f"{s} (source)" if s == source else s for s in metrics["sites"]]
    rows = [[name] + [_cell(m["per_site"][s], key) for s in metrics["sites"]] for name, m in metrics["methods"].items()]
    return Table(title, header, rows)


def format_table(metrics: Mapping) -> str:
    """Compact markdown summary, one row per method, values only (for the console)."""
    return _markdown_table(_method_table(metrics, CONSOLE_COLUMNS, "", with_ci=False))


def _protocol_tables(metrics: Mapping, name: str) -> list[Table]:
    """Per-domain AUC/F1/ECE and the mean/worst summary of one protocol, one row per method."""
    results = {m: v["protocols"][name] for m, v in metrics["methods"].items() if name in v.get("protocols", {})}
    if not results or all("per_domain" not in r for r in results.values()):
        return []
    tables = []
    for metric, label in (("auc", "ROC AUC"), ("f1", "F1"), ("ece", "ECE")):
        rows = [[m] + [_cell(r.get("per_domain", {}).get(d, {}), metric) for d in metrics["sites"]]
                for m, r in results.items()]
        tables.append(Table(f"{label} per test domain", ["method"] + list(metrics["sites"]), rows))
    keys = [("mean_auc", "mean AUC"), ("worst_auc", "worst AUC"), ("mean_f1", "mean F1"),
            ("worst_f1", "worst F1"), ("mean_ece", "mean ECE"), ("worst_ece", "worst ECE")]
    rows = [[m] + [_cell(r.get("summary", {}), k) for k, _ in keys] for m, r in results.items()]
    tables.append(Table("Over target domains", ["method"] + [t for _, t in keys], rows))
    return tables


def _signature_table(metrics: Mapping) -> Table:
    rows = []
    for name, m in metrics["methods"].items():
        s = m.get("signature", {})
        if "undefined" in s and isinstance(s["undefined"], str):
            rows.append([name] + ["n/a"] * 6)
            continue
        stable = s.get("stable_dims")
        rows.append([name, f"{s['size']} / {s['num_dims']}", _fmt(s.get("fold_jaccard")), _fmt(s["lambda"]),
                     _fmt(s["C"]), f"{s['folds']} ({'grouped' if s['grouped'] else 'random rows'})",
                     "—" if stable is None else f"{len(stable)}: " + ", ".join(map(str, stable[:10]))
                     + (" …" if len(stable) > 10 else "")])
    return Table("Sparse signatures of the source train embeddings",
                 ["method", "size / D", "fold Jaccard ↑", "λ", "sklearn C", "CV folds", "stable dims (≥ 60%)"], rows)


def _probe_table(metrics: Mapping) -> Table:
    rows = []
    for name, m in metrics["methods"].items():
        p = m.get("probe", {})
        if "threshold" not in p:
            rows.append([name, "n/a", "n/a", "n/a", p.get("undefined", "")])
            continue
        rows.append([name, _fmt(p["threshold"]), str(p["n_fit"]), str(p["n_val"]),
                     p["validation"] + ("; " + p["threshold_note"] if p.get("threshold_note") else "")])
    return Table("Probe decision threshold (maximises F1 on SOURCE validation; never sees a target label)",
                 ["method", "threshold", "fit examples", "validation examples", "validation split"], rows)


def _detection_table(metrics: Mapping) -> Table:
    rows = []
    for name, m in metrics["methods"].items():
        d = m.get("detection", {})
        if "threshold" not in d:
            rows.append([name, "n/a", "n/a", "n/a", "n/a", d.get("undefined", "")])
            continue
        rows.append([name, _fmt(d["threshold"]), _fmt(d["radius"]), str(d["validation_images"]),
                     str(d["validation_objects"]), d.get("threshold_note") or "—"])
    return Table("Detection threshold (maximises pooled detection F1 on SOURCE validation images; never sees a "
                 "target label)", ["method", "threshold", "radius (px)", "validation images", "validation objects",
                                   "note"], rows)


def _detection_section(metrics: Mapping) -> list[Section]:
    """The detection section, when some method has detection metrics (tile coordinates and a radius > 0)."""
    if not any("detection" in m for m in metrics["methods"].values()):
        return []
    text = ("Label-1 tiles are the ground-truth objects (for MIDOG: one tile centred on each mitotic figure). "
            "Per image, tiles whose probe P(y=1) reaches the threshold become detections at their tile centres; "
            "non-maximum suppression and one-to-one matching use the radius below, as the MIDOG challenge does "
            "(30 px = 7.5 µm at 0.25 µm/px).")
    tables = [_detection_table(metrics)] + [t for key, title in DETECTION_TABLES
                                            if (t := _site_table(metrics, key, title))]
    return [Section("Detection per site", [text], tables, [], [])]


def _grouped(entries: dict[tuple[str, str], set[str]], methods: list[str]) -> list[str]:
    """'- where: reason (methods)' lines, one per (where, reason), naming the methods unless it is all of them."""
    lines = []
    for (where, reason), names in entries.items():
        who = "all methods" if len(names) == len(methods) else ", ".join(m for m in methods if m in names)
        lines.append(f"- {where}: {reason} ({who})")
    return lines


def _undefined_lines(metrics: Mapping) -> list[str]:
    """Every undefined value (except trivial source-to-itself distances), partial means, protocol and signature
    notes, and why intervals are missing; identical reasons are merged across methods and metrics."""
    methods = list(metrics["methods"])
    undefined: dict[tuple[str, str], set[str]] = {}
    missing_ci: dict[tuple[str, str], set[str]] = {}

    def add(table, where, reason, method):
        table.setdefault((where, reason), set()).add(method)

    for name, m in metrics["methods"].items():
        for site, values in m["per_site"].items():
            by_reason: dict[str, list[str]] = {}
            for key, reason in values["undefined"].items():
                if not reason.startswith("reference site"):
                    by_reason.setdefault(reason, []).append(key)
            for reason, keys in by_reason.items():
                add(undefined, f"{site} / {', '.join(keys)}", reason, name)
            missing: dict[str, list[str]] = {}
            for key, reason in values.get("no_ci", {}).items():
                missing.setdefault(reason, []).append(key)
            for reason, keys in missing.items():
                if reason in (NO_CI_RAW, NO_CI_SLICED):  # the same at every site: say it once per metric
                    add(missing_ci, f"no interval for {', '.join(keys)}", reason, name)
                else:
                    add(missing_ci, f"{site} / no interval for {', '.join(keys)}", reason, name)
        summary = m["summary"]
        for key, reason in {**summary["undefined"], **summary["partial"]}.items():
            add(undefined, f"summary / {key}", reason, name)
        for proto, result in m.get("protocols", {}).items():
            if isinstance(result.get("undefined"), str):
                add(undefined, proto, result["undefined"], name)
            for note in result.get("notes", []):
                add(undefined, proto, note, name)
        signature = m.get("signature", {})
        if isinstance(signature.get("undefined"), str):
            add(undefined, "signature", signature["undefined"], name)
        else:
            for key, reason in signature.get("undefined", {}).items():
                add(undefined, f"signature / {key}", reason, name)
    return _grouped(undefined, methods) + _grouped(missing_ci, methods)


def build_sections(metrics: Mapping, figure_names: list[str]) -> list[Section]:
    """The report's content, independent of the output format."""
    mixing = next(iter(metrics["methods"].values()), {}).get("mixing", {})
    mixing_text = (f"Mixing metrics use a stratified subsample of {mixing.get('n')} cells over the sites "
                   f"{', '.join(mixing.get('sites', []))} (k = {mixing.get('lisi_neighbors')} for iLISI, "
                   f"{mixing.get('kbet_neighbors')} for kBET)." if mixing.get("n") else "")
    boot = metrics["bootstrap"]
    interval_text = (f"Intervals: {boot['replicates']} bootstrap replicates resampling "
                     f"{'groups (patients/regions) shared across sites' if boot['unit'] == 'group' else 'examples'}"
                     f", at most {boot['max_blocks']} blocks per resample.")
    sections = [
        Section("Summary", [HOW_TO_READ, interval_text],
                [_method_table(metrics, SEPARATION_COLUMNS,
                               "Separation from the source (means over unseen sites) and batch mixing (all sites)"),
                 _method_table(metrics, TRANSFER_COLUMNS, "Probe transfer (means over unseen sites)")], [], []),
        Section("Separation and mixing per site", [mixing_text],
                [t for key, title in SITE_TABLES[:9] if (t := _site_table(metrics, key, title))],
                [f for f in ("embeddings",) if f in figure_names], []),
        Section("Probe transfer per site", [],
                [_probe_table(metrics)] + [t for key, title in SITE_TABLES[9:] if (t := _site_table(metrics, key, title))],
                [f for f in ("auc", "reliability") if f in figure_names], []),
    ] + _detection_section(metrics)
    for name, title in PROTOCOL_TITLES.items():
        tables = _protocol_tables(metrics, name)
        if tables:
            sections.append(Section(title, [], tables, [], []))
    sections.append(Section("Sparse embedding signatures",
                            ["L1 logistic probe on the source train embeddings; λ minimises the grouped "
                             "cross-validated log-loss; the signature is the set of dimensions with non-zero weight. "
                             "Fold Jaccard = mean pairwise |A∩B|/|A∪B| of the folds' signatures; stable dims are "
                             "selected in ≥ 60% of half-sample refits."],
                            [_signature_table(metrics)], [f for f in ("signatures",) if f in figure_names], []))
    sections.append(Section("Definitions", [], [], [], [f"**{k}**: {v}" for k, v in metrics["notes"].items()]))
    undefined = _undefined_lines(metrics)
    if undefined:
        sections.append(Section("Undefined or partial values", [], [], [], [line[2:] for line in undefined]))
    return sections


def _markdown_table(table: Table) -> str:
    def row(cells):
        return "| " + " | ".join(cells) + " |"

    align = [":---"] + ["---:"] * (len(table.header) - 1)
    return "\n".join([row(table.header), row(align), *(row(r) for r in table.rows)])


def render_markdown(metrics: Mapping, figure_names: list[str] = ()) -> str:
    """The full report.md text (figures referenced as the PNG files beside it)."""
    parts = [f"# Embedding evaluation (source site: {metrics['source_site']})", ""]
    for section in build_sections(metrics, list(figure_names)):
        parts += [f"## {section.title}", ""]
        parts += [p for text in section.paragraphs if text for p in (text, "")]
        for table in section.tables:
            parts += ([f"### {table.title}", ""] if table.title else []) + [_markdown_table(table), ""]
        parts += [f"![{name}]({name}.png)\n" for name in section.figures]
        parts += [f"- {b}" for b in section.bullets] + ([""] if section.bullets else [])
    return "\n".join(parts)


def write_report(metrics: Mapping, out_dir: str | Path, *,
                 projections: Mapping[str, figures.Projection] | None = None) -> dict[str, Path]:
    """Write metrics.json, report.md, report.html and the PNGs into out_dir; return their paths by kind.

    PNGs: embeddings (when projections are given: method → Projection of its held-out embeddings), auc,
    reliability, signatures.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"metrics": out / "metrics.json"}
    paths["metrics"].write_text(json.dumps(metrics, indent=2, ensure_ascii=False, allow_nan=False) + "\n", "utf-8")
    if projections:
        paths["embeddings"] = figures.plot_projections(projections, list(metrics["sites"]), metrics["source_site"],
                                                       out / "embeddings.png")
    paths["auc"] = figures.plot_auc(metrics, out / "auc.png")
    paths["reliability"] = figures.plot_reliability(metrics, out / "reliability.png")
    paths["signatures"] = figures.plot_signatures(metrics, out / "signatures.png")
    names = [k for k in ("embeddings", "auc", "reliability", "signatures") if k in paths]
    paths["report"] = out / "report.md"
    paths["report"].write_text(render_markdown(metrics, names), "utf-8")
    paths["html"] = out / "report.html"
    title = f"Embedding evaluation (source site: {metrics['source_site']})"
    page = html_report.render(title, build_sections(metrics, names), {n: paths[n] for n in names})
    paths["html"].write_text(page, "utf-8")
    return paths
