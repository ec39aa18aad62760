"""Block bootstrap: resample units (patients/groups, or examples) with replacement, cheaply and paired.

Every metric is computed from per-block sufficient statistics, so one replicate costs O(blocks), not
O(examples): a replicate is a vector of block counts c and the point estimate is the same formula
with c = 1. With groups, the units are the groups and one count vector is shared by every domain,
so the same patient/region drawn twice counts twice at every site (a paired bootstrap: the same
tissue rendered at two sites stays paired). Without groups, the units are a domain's own rows,
resampled independently per domain. Above `max_blocks` units, random unions of units form the
blocks (variance of sums stays unbiased). Intervals: see `interval`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # two-sided coverage of every reported interval
MIN_DEFINED_SHARE = 0.9  # an interval needs this share of replicates to be defined (e.g. both classes drawn)
METHOD = "median-centred percentile interval over block-bootstrap replicates"


@dataclass(frozen=True)
class Blocks:
    """Block index of each row and the replicate block counts drawn for the blocks."""

    ids: np.ndarray  # (n,) int block index in 0..num-1
    num: int
    unit: str  # what a block is made of: "group" or "example"
    counts: np.ndarray  # (R, num) float64 resampling counts; R = 0 when the bootstrap is off

    def ones(self) -> np.ndarray:
        """The point-estimate 'replicate': every block once, shape (1, num)."""
        return np.ones((1, self.num))

    def draws(self) -> np.ndarray:
        """Block counts with the point estimate first: [ones; replicate counts], shape (1 + R, num)."""
        return np.concatenate([self.ones(), self.counts])

    def subset(self, rows: np.ndarray) -> Blocks:
        """The blocks of `rows` only (renumbered 0..k-1), keeping their shared replicate counts."""
        present, local = np.unique(self.ids[rows], return_inverse=True)
        return Blocks(ids=local.astype(np.int64), num=len(present), unit=self.unit, counts=self.counts[:, present])


@dataclass(frozen=True)
class Estimate:
    """A metric's point value (or why it is undefined) and its bootstrap replicates (or why there are none)."""

    value: float | str
    replicates: np.ndarray | str  # (R,) with NaN where a replicate is undefined


def _multinomial(num: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(R, num) counts of `num` draws with replacement from `num` blocks."""
    if not num:
        return np.zeros((replicates, 0))
    return rng.multinomial(num, np.full(num, 1.0 / num), size=replicates).astype(np.float64)


def make_blocks(strata: np.ndarray, groups: np.ndarray | None, *, max_blocks: int, replicates: int,
                rng: np.random.Generator) -> Blocks:
    """Bootstrap blocks for rows labelled by stratum (domain/site): shared groups, else per-stratum rows.

    With `groups`, a block is a group (or a random union of groups above max_blocks) and the counts
    are drawn once over all blocks. Without, a block is a row (or a random union of a stratum's rows
    above max_blocks) and each stratum's blocks are resampled on their own.
    """
    if max_blocks < 2:
        raise ValueError(f"make_blocks: max_blocks must be ≥ 2; got {max_blocks}.")
    strata = np.asarray(strata)
    if groups is not None:
        groups = np.asarray(groups)
        if groups.shape != strata.shape:
            raise ValueError(f"make_blocks: groups must have shape {strata.shape}; got {groups.shape}.")
        _, ids = np.unique(groups, return_inverse=True)
        num = int(ids.max()) + 1 if ids.size else 0
        if num > max_blocks:
            ids, num = (rng.permutation(num) % max_blocks)[ids], max_blocks
        return Blocks(ids=ids.astype(np.int64), num=num, unit="group", counts=_multinomial(num, replicates, rng))
    ids = np.zeros(len(strata), np.int64)
    counts, offset = [], 0
    for stratum in np.unique(strata):
        rows = np.flatnonzero(strata == stratum)
        num = min(len(rows), max_blocks)
        ids[rows] = offset + rng.permutation(len(rows)) % num
        counts.append(_multinomial(num, replicates, rng))
        offset += num
    return Blocks(ids=ids, num=offset, unit="example",
                  counts=np.concatenate(counts, axis=1) if counts else np.zeros((replicates, 0)))


def block_sums(blocks: Blocks, values: np.ndarray) -> np.ndarray:
    """Per-block sums of `values` (n,) or (n, k) → (num,) or (num, k), in float64."""
    values = np.asarray(values, np.float64)
    flat = values.reshape(len(values), -1)
    out = np.stack([np.bincount(blocks.ids, weights=flat[:, j], minlength=blocks.num) for j in range(flat.shape[1])],
                   axis=1) if flat.shape[1] else np.zeros((blocks.num, 0))
    return out.reshape((blocks.num,) + values.shape[1:])


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, NaN where den is 0 (an undefined replicate), without warnings."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / den, np.nan)


def no_replicates_reason(blocks: Blocks) -> str | None:
    """Why a domain gets no interval (bootstrap off, or fewer than 2 units), or None."""
    if len(blocks.counts) == 0:
        return "bootstrap disabled (eval.bootstrap_replicates = 0)"
    if blocks.num < 2:
        return f"only {blocks.num} bootstrap unit ({blocks.unit}); resampling cannot vary"
    return None


def estimate(blocks: Blocks, statistic, undefined_reason: str) -> Estimate:
    """Point value and replicates of `statistic(counts (K, num)) -> (K,)` (NaN = undefined for that draw).

    `undefined_reason` names why the point value is undefined when it comes out NaN.
    """
    return from_draws(np.asarray(statistic(blocks.draws()), np.float64), [blocks], undefined_reason)


def from_draws(values: np.ndarray, sides: list[Blocks], undefined_reason: str) -> Estimate:
    """Estimate from values for [point, replicate 1..R] computed from `sides`' block counts.

    The point being NaN makes it undefined (with `undefined_reason`); a side without replicates
    leaves it without an interval.
    """
    if not np.isfinite(values[0]):
        return Estimate(undefined_reason, "metric undefined")
    why = next((w for b in sides if (w := no_replicates_reason(b))), None)
    return Estimate(float(values[0]), why if why else np.asarray(values[1:], np.float64))


def interval(replicates: np.ndarray | str, value: float, bounds: tuple[float, float] = (-np.inf, np.inf)
             ) -> tuple[float, float] | str:
    """Median-centred percentile interval at LEVEL over the defined replicates, or the reason there is none.

    [value − (q50 − q2.5), value + (q97.5 − q50)], clipped to the metric's `bounds`: the spread of the
    bootstrap distribution placed around the estimate. Duplicated units shift plug-in distances (FD,
    MMD) in every replicate; centring on the estimate removes that shift, and for an unbiased bootstrap
    (median = estimate) it is the plain percentile interval.
    """
    if isinstance(replicates, str):
        return replicates
    finite = replicates[np.isfinite(replicates)]
    if len(finite) < MIN_DEFINED_SHARE * len(replicates):
        return (f"only {len(finite)} of {len(replicates)} bootstrap replicates defined "
                "(resamples miss a class or a unit); too few examples for an interval")
    tail = 100 * (1 - LEVEL) / 2
    lo, mid, hi = np.percentile(finite, [tail, 50, 100 - tail])
    return float(np.clip(value - (mid - lo), *bounds)), float(np.clip(value + (hi - mid), *bounds))


def combine(estimates: dict[str, Estimate], how) -> tuple[Estimate, str | None]:
    """Combine named estimates (e.g. sites) with `how(list of arrays) -> array`, such as a mean over sites.

    Undefined inputs are left out and named in the returned note; with none defined the result is
    undefined. An interval needs replicates from every defined input (same R for all).
    """
    defined = {k: e for k, e in estimates.items() if not isinstance(e.value, str)}
    missing = [k for k in estimates if k not in defined]
    if not defined:
        where = f"undefined at every one ({', '.join(missing)})" if missing else "nothing to combine"
        return Estimate(where, "metric undefined"), None
    note = (f"over {len(defined)} of {len(estimates)}; undefined at {', '.join(missing)}") if missing else None
    value = float(how([np.asarray([e.value]) for e in defined.values()])[0])
    reasons = [e.replicates for e in defined.values() if isinstance(e.replicates, str)]
    if reasons:
        return Estimate(value, reasons[0]), note
    return Estimate(value, np.asarray(how([e.replicates for e in defined.values()]), np.float64)), note


def as_json(estimates: dict[str, Estimate | float | str], bounds: dict[str, tuple[float, float]] | None = None) -> dict:
    """{metric: number | None, "ci": {metric: [lo, hi]}, "no_ci": {metric: reason}, "undefined": {metric: reason}}.

    Plain floats are values reported without an interval; plain strings are undefined values (reasons).
    `bounds` gives a metric's natural range (e.g. AUC in [0, 1]) to clip its interval to.
    """
    out: dict = {}
    ci, no_ci, undefined = {}, {}, {}
    for name, e in estimates.items():
        value = e.value if isinstance(e, Estimate) else e
        if isinstance(value, str):
            out[name], undefined[name] = None, value
            continue
        out[name] = float(value)
        if isinstance(e, Estimate):
            limits = interval(e.replicates, float(value), (bounds or {}).get(name, (-np.inf, np.inf)))
            if isinstance(limits, tuple):
                ci[name] = list(limits)
            else:
                no_ci[name] = limits
    return {**out, "ci": ci, "no_ci": no_ci, "undefined": undefined}
