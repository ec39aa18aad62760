"""Turn the suite's metrics dict into files: metrics.json, report.md, report.html and the PNG figures.

The report is built once as a list of sections (text, tables, figure names) and rendered twice:
as markdown and as a self-contained HTML page with the figures embedded. Which tables, columns and sections
there are comes from the metric families (evaluate/families/): their specs, in family order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from etils import epath

from lmc_jax.evaluate import families, figures, html_report
from lmc_jax.evaluate.families.layout import Section, Table, method_table, site_table
from lmc_jax.evaluate.families.spec import Family, Intro, MetricSpec, SummaryTable

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


def _label(spec: MetricSpec, kind: str, unseen_prefix: str, label: str | None = None) -> str:
    """A summary column's header: 'source AUC ↑', 'unseen AUC ↑' (the table's prefix), 'kBET acceptance ↑'."""
    prefix = {"mean_unseen": unseen_prefix, "source": "source "}.get(kind, "")
    return f"{prefix}{label or spec.label}{spec.arrow}"


def _summary_columns(group: list[Family], table: SummaryTable) -> list[tuple[str, str]]:
    """(summary key, header) of every column the families' specs put in their summary table, in spec order."""
    return [(spec.summary_key(kind), _label(spec, kind, table.unseen_prefix))
            for f in group for spec in f.specs for kind in spec.columns]


def format_table(metrics: Mapping) -> str:
    """Compact markdown summary, one row per method, values only (for the console)."""
    columns = [(spec.summary_key(kind), _label(spec, kind, "mean unseen ", spec.short))
               for spec in families.all_specs() for kind in spec.console]
    return _markdown_table(method_table(metrics, columns, "", with_ci=False))


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
    everywhere = {spec.no_interval for spec in families.all_specs() if spec.no_interval}
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
                if reason in everywhere:  # the same at every site: say it once per metric
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


def _summary_tables(metrics: Mapping, shown: list[Family]) -> list[Table]:
    """One method table per summary table the families name, in family order, over their specs' columns."""
    groups: dict[SummaryTable, list[Family]] = {}
    for f in shown:
        if f.summary_table:
            groups.setdefault(f.summary_table, []).append(f)
    return [method_table(metrics, _summary_columns(group, table), table.title) for table, group in groups.items()]


def _site_tables(metrics: Mapping, family: Family) -> list[Table]:
    """The family's per-site tables in spec order, reference-only metrics last; undefined-everywhere ones dropped."""
    specs = sorted((s for s in family.specs if s.title), key=lambda s: s.reference)
    return [t for spec in specs if (t := site_table(metrics, spec.key, spec.title))]


def _family_sections(metrics: Mapping, figure_names: list[str], shown: list[Family]) -> list[Section]:
    """In family order: a family's intro and per-site tables join the section it names (opened by the first family
    naming it), and its own sections follow."""
    sections: list[Section] = []
    for f in shown:
        if f.section:
            intro = f.intro(metrics, figure_names) if f.intro else Intro()
            section = next((s for s in sections if s.title == f.section), None)
            if section is None:
                section = Section(f.section, [], [], [], [])
                sections.append(section)
            section.paragraphs.extend(intro.paragraphs)
            section.tables.extend(intro.tables + _site_tables(metrics, f))
            section.figures.extend(intro.figures)
        if f.sections:
            sections += f.sections(metrics, figure_names)
    return sections


def _encoders_section(metrics: Mapping) -> list[Section]:
    """Which weights each method scored (run, step, EMA or raw), when the caller recorded it."""
    encoders = metrics.get("encoders")
    if not encoders:
        return []
    rows = [[name, str(e.get("run", "—")), str(e.get("step", "—")), str(e.get("weights", "—"))]
            for name, e in encoders.items()]
    return [Section("Encoders", ["The weights each row scored: ema = the exponential moving average of the "
                                 "weights (optimizer.ema_decay > 0 and eval.use_ema), raw = the optimiser's."],
                    [Table("", ["method", "run", "step", "weights"], rows)], [], [])]


def build_sections(metrics: Mapping, figure_names: list[str]) -> list[Section]:
    """The report's content, independent of the output format."""
    shown = [f for f in families.FAMILIES if f.ran(metrics)]
    boot = metrics["bootstrap"]
    interval_text = (f"Intervals: {boot['replicates']} bootstrap replicates resampling "
                     f"{'groups (patients/regions) shared across sites' if boot['unit'] == 'group' else 'examples'}"
                     f", at most {boot['max_blocks']} blocks per resample.")
    sections = [Section("Summary", [HOW_TO_READ, interval_text], _summary_tables(metrics, shown), [], [])]
    sections += _encoders_section(metrics)
    sections += _family_sections(metrics, list(figure_names), shown)
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


def write_report(metrics: Mapping, out_dir: epath.PathLike, *,
                 projections: Mapping[str, figures.Projection] | None = None) -> dict[str, epath.Path]:
    """Write metrics.json, report.md, report.html and the PNGs into out_dir; return their paths by kind.

    PNGs: embeddings (when projections are given: method → Projection of its held-out embeddings), auc,
    reliability, signatures. `out_dir` may be remote (gs://...): every file goes through etils.epath.
    """
    out = epath.Path(out_dir)
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
