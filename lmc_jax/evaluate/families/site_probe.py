"""Site probe: can a fresh linear classifier tell the sites apart from the frozen embeddings?

The post-hoc check of domain alignment (an adversary's own head can be fooled while the domain stays readable):
a multinomial logistic probe of the site (`kernels.multinomial`) over the source and the unseen sites with enough
rows, an equal random share of eval.site_probe_max_rows rows per site, cross-fitted over two halves of the tiles
(a group, or a tile's renderings at every site, never in both halves), so each row's site is predicted by the
probe fitted on the other half. Accuracy over all rows (chance = 1 / sites, the shares being equal) and, per site,
the share of its rows named as that site. Bootstrap draws reweight the rows by their site's block counts; the
probes themselves are held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, multinomial
from lmc_jax.evaluate.kernels.bootstrap import Estimate
from lmc_jax.evaluate.families.inputs import Inputs
from lmc_jax.evaluate.families.separation import SECTION, SUMMARY
from lmc_jax.evaluate.families.spec import UNIT, Family, Intro, MetricSpec, Result

_JOINT = ("joint",)
SPECS = (
    MetricSpec(
        "site_probe", "site-probe acc.", "A fresh multinomial logistic probe of the site from the frozen "
        "embeddings (L2 eval.probe_l2, z-scored with its fit rows' statistics; kernels/multinomial.py), over the "
        "source and the unseen sites with ≥ min_site_samples held-out rows, an equal random share of "
        "eval.site_probe_max_rows rows per site, cross-fitted over two halves of the groups (tiles when there "
        "are no groups; a tile's renderings stay in one half): each row's site is predicted by the probe fitted "
        "on the other half. Summary: accuracy over all rows (chance = 1 / number of sites); per site: the share "
        "of that site's rows named as it. Lower = the sites are harder to tell apart.",
        title="Site-probe recall (share of this site's rows a fresh probe names as this site; lower = hidden)",
        direction=-1, bounds=UNIT, summary=_JOINT, columns=_JOINT, console=_JOINT, short="site probe"),
)
KEYS = tuple(s.key for s in SPECS)


def _halves(units: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """0/1 per row: each distinct unit drawn into one half at random, the halves as equal in units as possible."""
    distinct, inverse = np.unique(units, return_inverse=True)
    side = np.zeros(len(distinct), np.int64)
    side[rng.permutation(len(distinct))[: len(distinct) // 2]] = 1
    return side[inverse]


def cross_fitted_sites(z: np.ndarray, sites: np.ndarray, units: np.ndarray, l2: float,
                       rng: np.random.Generator) -> np.ndarray | str:
    """Each row's site as predicted by a multinomial probe fitted on the other half of the units, or why not."""
    half = _halves(units, rng)
    predicted = np.empty(len(sites), dtype=multinomial.ids(sites).dtype)
    for side in (0, 1):
        fit = half != side
        if len(np.unique(sites[fit])) < 2 or not np.any(half == side):
            return "fewer than 2 units per half hold 2 sites: nothing to cross-fit"
        params = multinomial.fit_multinomial(z[fit], sites[fit], l2)
        predicted[half == side] = multinomial.predict_multinomial(params, z[half == side])
    return predicted


def evaluate(inputs: Inputs) -> Result:
    """Site-probe accuracy over the source and the unseen sites with enough rows; the other sites get reasons."""
    ctx, s = inputs.ctx, inputs.ctx.settings
    if isinstance(inputs.sites, str):
        return Result.undefined(ctx.site_names, KEYS, inputs.sites, "site_probe")
    joined = inputs.joint_site_ids()
    per_site = {n: dict.fromkeys(KEYS, ctx.too_few(inputs.size(i)) if inputs.size(i) < s.min_site_samples
                                 else "site excluded from summaries, so not probed")
                for i, n in enumerate(ctx.site_names) if i not in joined}
    if len(joined) < 2:
        reason = f"needs at least 2 sites with enough examples; got {[ctx.site_names[i] for i in joined]}"
        return Result({**per_site, **{ctx.site_names[i]: dict.fromkeys(KEYS, reason) for i in joined}},
                      dict.fromkeys(KEYS, Estimate(reason, "metric undefined")), {"site_probe": {}})
    rng = ctx.rng(8)
    picks = inputs.equal_shares(joined, s.site_probe_max_rows, rng)
    z = np.concatenate([inputs.sites[i].z[picks[i]] for i in joined])
    site = np.concatenate([np.full(len(picks[i]), ctx.site_names[i]) for i in joined])
    rows = np.concatenate([inputs.blocks[i][0][picks[i]] for i in joined])  # indices into the held-out set
    m = inputs.m
    units = (np.asarray(m.heldout_groups)[rows] if m.heldout_groups is not None
             else np.asarray(m.heldout_tile_ids)[rows] if m.heldout_tile_ids is not None else rows)
    predicted = cross_fitted_sites(z, site, multinomial.ids(units), s.probe_l2, rng)
    weights = np.concatenate([inputs.sites[i].blocks.draws()[:, inputs.sites[i].blocks.ids[picks[i]]]
                              for i in joined], axis=1)
    chance = max(len(p) for p in picks.values()) / len(site)  # the largest site's share: 1 / sites when equal

    def accuracy(cells: np.ndarray, sides: list[bootstrap.Blocks]) -> Estimate:
        if isinstance(predicted, str):
            return Estimate(predicted, "metric undefined")
        correct = (predicted[cells] == site[cells]).astype(np.float64)
        w = weights[:, cells]
        return bootstrap.from_draws(bootstrap.ratio(w @ correct, w.sum(axis=1)), sides, "no rows")

    for i in joined:
        per_site[ctx.site_names[i]] = {"site_probe": accuracy(np.flatnonzero(site == ctx.site_names[i]),
                                                              [inputs.sites[i].blocks])}
    joint = {"site_probe": accuracy(np.arange(len(site)), [inputs.sites[i].blocks for i in joined])}
    info = {"sites": [ctx.site_names[i] for i in joined], "n": int(len(site)), "chance": chance,
            "units": "groups" if m.heldout_groups is not None else "tiles" if m.heldout_tile_ids is not None
            else "rows"}
    if isinstance(predicted, str):
        info["undefined"] = predicted
    return Result({n: per_site[n] for n in ctx.site_names}, joint, {"site_probe": info})


def intro(metrics: Mapping, figure_names: Sequence[str]) -> Intro:
    """How many rows of which sites the site probe used, and its chance level (the first method's; all share it)."""
    info = next(iter(metrics["methods"].values()), {}).get("site_probe", {})
    if not info.get("n"):
        return Intro()
    return Intro(paragraphs=[
        f"The site probe tells {len(info['sites'])} sites ({', '.join(info['sites'])}) apart on {info['n']} rows, "
        f"cross-fitted over two halves of the {info['units']}; chance is {info['chance']:.3f}."])


FAMILY = Family("site_probe", SPECS, evaluate, section=SECTION, summary_table=SUMMARY, intro=intro)
