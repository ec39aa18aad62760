"""Report building blocks the families and report.py share: tables, sections, cell formatting, and the method ×
summary-column and method × site tables that the families' specs fill."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple


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


def fmt(value: float | None) -> str:
    """Three significant digits; n/a for an undefined value."""
    return "n/a" if value is None else f"{value:#.3g}"


def cell(entry: Mapping, key: str) -> str:
    """A value with its 95% interval when there is one: '0.912 [0.883, 0.936]'."""
    value = entry.get(key)
    ci = entry.get("ci", {}).get(key)
    return fmt(value) + (f" [{fmt(ci[0])}, {fmt(ci[1])}]" if value is not None and ci else "")


def defined(entries: list[Mapping], key: str) -> bool:
    return any(e.get(key) is not None for e in entries)


def method_table(metrics: Mapping, columns: Sequence[tuple[str, str]], title: str, *, with_ci: bool = True) -> Table:
    """One row per method over (summary key, label) columns that are defined somewhere (the rest are dropped)."""
    summaries = [m["summary"] for m in metrics["methods"].values()]
    cols = [(k, t) for k, t in columns if defined(summaries, k)]
    rows = [[name] + [(cell if with_ci else lambda e, k: fmt(e.get(k)))(m["summary"], k) for k, _ in cols]
            for name, m in metrics["methods"].items()]
    return Table(title, ["method"] + [t for _, t in cols], rows)


def site_table(metrics: Mapping, key: str, title: str) -> Table | None:
    """Method × site table of one per-site metric (source column marked), or None if undefined everywhere."""
    source = metrics["source_site"]
    entries = [s for m in metrics["methods"].values() for s in m["per_site"].values()]
    if not defined(entries, key):
        return None
    header = ["method"] + [f"{s} (source)" if s == source else s for s in metrics["sites"]]
    rows = [[name] + [cell(m["per_site"][s], key) for s in metrics["sites"]] for name, m in metrics["methods"].items()]
    return Table(title, header, rows)


def figures_present(names: Sequence[str], figure_names: Sequence[str]) -> list[str]:
    """The figures among `names` that were written, in that order."""
    return [f for f in names if f in figure_names]
