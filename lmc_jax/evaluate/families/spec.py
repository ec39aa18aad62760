"""What a metric family declares once: one `MetricSpec` row per metric, and the `Family` that computes them.

The suite (values, bounds, notes, summary) and the report (summary, console and per-site tables, section
placement) read these rows; nothing else lists a family's metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from lmc_jax.evaluate.kernels.bootstrap import Estimate
from lmc_jax.evaluate.families.layout import Section, Table

# Summary value kinds, in the order metrics.json writes them: the mean over unseen sites, the source site's
# value, a value derived from those (spec.derive), a value over all sites at once that the family computes.
SUMMARY_KINDS = ("mean_unseen", "source", "derived", "joint")
UNIT = (0.0, 1.0)  # the natural range of a rate or a probability


@dataclass(frozen=True)
class MetricSpec:
    """One metric: its key in metrics.json, how the report labels it, its range and its definition."""

    key: str  # per-site key (and the summary key of a derived / joint value)
    label: str  # column label without the arrow, e.g. "FD/D", "AUC"
    note: str  # the definition written to metrics.json "notes"
    title: str | None = None  # title of its method × site table; None: no per-site table
    direction: int = 0  # +1 higher is better, -1 lower is better, 0 neither (the column arrow)
    bounds: tuple[float, float] = (-np.inf, np.inf)  # natural range: intervals are clipped to it
    no_interval: str | None = None  # why it never carries a bootstrap interval (said once per metric)
    per_site: bool = True  # written for every site
    summary: tuple[str, ...] = ("mean_unseen",)  # summary value kinds (SUMMARY_KINDS) it gets
    columns: tuple[str, ...] = ()  # which of them the family's summary table shows, in column order
    console: tuple[str, ...] = ()  # which of them the console table shows
    short: str | None = None  # console label where shorter than `label`
    reference: bool = False  # scale-dependent, for reference only: its per-site table after the family's others
    protocol: str | None = None  # its name in the transfer-protocol tables; None: not shown there
    derive: Callable[[Mapping[str, Estimate]], Estimate | str] | None = None  # a "derived" value from the summary

    def __post_init__(self) -> None:
        problems = [
            (self.direction in (-1, 0, 1), "direction must be -1, 0 or +1"),
            (set(self.summary) <= set(SUMMARY_KINDS), f"summary kinds come from {SUMMARY_KINDS}"),
            (set(self.columns) | set(self.console) <= set(self.summary), "columns/console must be summary kinds"),
            (("derived" in self.summary) == (self.derive is not None), "a derived summary needs derive (only it)"),
            (self.per_site or not {"mean_unseen", "source"} & set(self.summary),
             "mean_unseen/source summaries need per-site values"),
            (self.per_site or self.title is None, "a per-site table needs per-site values"),
        ]
        for ok, message in problems:
            if not ok:
                raise ValueError(f"MetricSpec {self.key!r}: {message}.")

    def summary_key(self, kind: str) -> str:
        """Its key in the summary: mean_unseen_<key>, source_<key>, or the key itself (derived, joint)."""
        return f"{kind}_{self.key}" if kind in ("mean_unseen", "source") else self.key

    @property
    def arrow(self) -> str:
        return {1: " ↑", -1: " ↓", 0: ""}[self.direction]


class SummaryTable(NamedTuple):
    """A summary table of the report: families naming the same one share it, their columns in family order."""

    title: str
    unseen_prefix: str = ""  # label prefix of its mean-over-unseen-sites columns ("unseen " → "unseen AUC ↑")


@dataclass(frozen=True)
class Result:
    """A family's part of one method's result."""

    per_site: dict[str, dict[str, Any]] = field(default_factory=dict)  # site → {key: Estimate | float | reason}
    joint: dict[str, Any] = field(default_factory=dict)  # "joint" summary values: key → Estimate | reason
    entries: dict[str, Any] = field(default_factory=dict)  # method-level metrics.json entries ("probe", ...)

    @classmethod
    def undefined(cls, site_names: Sequence[str], keys: Sequence[str], reason: str, entry: str) -> Result:
        """Every per-site and joint value of `keys` undefined for `reason`, with an empty `entry`."""
        return cls({n: dict.fromkeys(keys, reason) for n in site_names},
                   dict.fromkeys(keys, Estimate(reason, "metric undefined")), {entry: {}})


@dataclass(frozen=True)
class Intro:
    """What a family puts at the head of its report section besides its per-site tables."""

    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)  # before its per-site tables
    figures: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Family:
    """A metric family: its specs, how it computes them for one method, and where the report shows them."""

    name: str
    specs: tuple[MetricSpec, ...]
    evaluate: Callable[[Any], Result]  # inputs.Inputs → Result
    applies: Callable[[Any, Any], bool] | None = None  # (MethodEmbeddings, Settings) → bool; None: every method
    section: str | None = None  # title of the report section its per-site tables go to (shared by title)
    summary_table: SummaryTable | None = None  # the summary table its specs' summary columns go to
    intro: Callable[[Mapping, Sequence[str]], Intro] | None = None  # (metrics, figure names) → its section's head
    sections: Callable[[Mapping, Sequence[str]], list[Section]] | None = None  # (metrics, figure names) → own

    @property
    def optional(self) -> bool:
        """Only some methods get it (e.g. detection needs tile coordinates): notes and sections only if it ran."""
        return self.applies is not None

    def per_site_keys(self) -> tuple[str, ...]:
        return tuple(s.key for s in self.specs if s.per_site)

    def ran(self, metrics: Mapping) -> bool:
        """Whether the metrics dict holds this family's values (always, unless optional)."""
        keys = self.per_site_keys()
        return not self.optional or any(k in site for m in metrics["methods"].values()
                                        for site in m["per_site"].values() for k in keys)
