"""Leaderboard robustness scores: plismbench's paired-tile cosine similarity and top-10 retrieval between sites, and
PathoROB's robustness index (definitions and sources: kernels/robustness.py).

The joint set is the source and the unseen sites with enough rows, as for mixing. plismbench: every pair of its
sites over the tiles both hold (matched by tile_id), grouped by what the two sites change (eval.robustness_site_changes)
and summarised by medians over pairs; per site, the site paired with the source. PathoROB: one kNN graph over a
stratified subsample of the joint set (centre = site, class = label, case = group); per site, that site's rows as
queries. Both use the raw embeddings, L2-normalised, as the two benchmarks do. Bootstrap draws reweight the tiles /
rows by their blocks (paired across sites with groups); neighbour sets are held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, robustness
from lmc_jax.evaluate.kernels.bootstrap import Blocks, Estimate
from lmc_jax.evaluate.families.inputs import Inputs
from lmc_jax.evaluate.families.spec import UNIT, Family, Intro, MetricSpec, Result, SummaryTable

TOP_K = 10  # plismbench's leaderboard k
SECTION = "Robustness scores per site (plismbench, PathoROB)"
SUMMARY = SummaryTable("Robustness scores (plismbench: medians over site pairs; PathoROB robustness index)")
_JOINT = ("joint",)
_GROUP_LABELS = {"cross_scanner": "cross-scanner", "cross_staining": "cross-staining",
                 "cross_both": "cross-scanner+staining"}
_PAIR_NOTE = ("Over the tiles both sites hold (matched by tile_id; raw embeddings, L2-normalised), as plismbench "
              "scores a pair of slides.")


def _group_spec(group: str) -> MetricSpec:
    changes = {"cross_scanner": "another scanner, same staining", "cross_staining": "same scanner, another staining",
               "cross_both": "another scanner and another staining"}[group]
    return MetricSpec(
        f"plism_top10_{group}", f"top-10 {_GROUP_LABELS[group]}", f"plismbench top-10 accuracy, {_GROUP_LABELS[group]}: "
        f"median of plism_top10 over the pairs of joint-set sites whose sites differ by {changes} (what each site "
        "changes: eval.robustness_site_changes).", direction=1, bounds=UNIT, per_site=False, summary=_JOINT,
        columns=_JOINT)


SPECS = (
    MetricSpec(
        "plism_cosine", "cosine (all pairs)", "plismbench cosine similarity of a pair of sites: mean over their shared "
        f"tiles of cos(tile at site a, same tile at site b). {_PAIR_NOTE} Per site: the site paired with the source; "
        "summary: median over all pairs of joint-set sites (the source and the unseen sites with enough rows). High "
        "raw cosine alone can flatter an encoder whose embeddings share a large common component; top-10 guards.",
        title="plismbench cosine similarity with the source (mean over shared tiles; 1 = identical directions)",
        direction=1, bounds=(-1.0, 1.0), summary=_JOINT, columns=_JOINT),
    MetricSpec(
        "plism_top10", "top-10 (all pairs)", f"plismbench top-{TOP_K} retrieval accuracy of a pair of sites: the "
        "shared tiles of both sites are pooled, and a tile scores a hit when its rendering at the other site is among "
        f"its {TOP_K} nearest (cosine) pooled tiles other than itself; the share of hits, averaged over both "
        f"directions. {_PAIR_NOTE} Depends on the number of shared tiles: above eval.plism_max_tiles (8139, "
        "plismbench's reference) a fixed random subset of that many, the same for every pair and method. Per site: "
        "with the source; summary: median over all pairs of joint-set sites.",
        title=f"plismbench top-{TOP_K} retrieval accuracy with the source (pooled tiles, both directions)",
        direction=1, bounds=UNIT, summary=_JOINT),
    *(_group_spec(g) for g in robustness.PAIR_GROUPS),
    MetricSpec(
        "plism_score", "plism score", "plismbench leaderboard metric: mean of the median cosine similarity over all "
        "pairs and the median top-10 accuracies over the cross-scanner, cross-staining and cross-scanner+staining "
        "pairs (a group without pairs is left out of the mean; the metrics.json robustness entry lists the parts).",
        direction=1, bounds=(-0.25, 1.0), per_site=False, summary=_JOINT, columns=_JOINT, console=_JOINT),
    MetricSpec(
        "robustness_index", "RI", "PathoROB robustness index: among the eval.ri_neighbors nearest neighbours "
        "(cosine, raw embeddings) of each row from another group (the row's own patient/region removed, as PathoROB "
        "removes the query's slide; the same tile at other sites without groups), SO = same label and another site, "
        "OS = other label and the same site; RI = ΣSO / (ΣSO + ΣOS), pooled over rows and neighbours (1 = labels, "
        "not sites, make neighbours; 0.5 ≈ both alike). One kNN graph over a stratified subsample (at most "
        "eval.integration_max_samples rows) of the joint-set sites; per site: that site's rows as queries.",
        title="PathoROB robustness index SO / (SO + OS) (neighbours from other groups), this site's rows as queries",
        direction=1, bounds=UNIT, summary=_JOINT, columns=_JOINT, console=_JOINT),
)
KEYS = tuple(s.key for s in SPECS if s.per_site)
JOINT_KEYS = tuple(s.key for s in SPECS)
PLISM_KEYS = tuple(k for k in JOINT_KEYS if k.startswith("plism_"))


@dataclass(frozen=True)
class _Pair:
    """One pair of sites scored over their shared tiles: point value first, then the bootstrap draws."""

    sites: tuple[str, str]
    group: str | None
    tiles: int
    cosine: np.ndarray  # (1 + R,)
    top10: np.ndarray  # (1 + R,)


def _draws(b: Blocks, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Weighted means of the columns of values (n, c) over `rows` of a site, for the point and each draw: (1+R, c)."""
    sub = Blocks(ids=b.ids[rows], num=b.num, unit=b.unit, counts=b.counts)
    sums = sub.draws() @ bootstrap.block_sums(sub, np.column_stack([values, np.ones(len(rows))]))
    return bootstrap.ratio(sums[:, :-1], sums[:, -1:])


def tile_priority(inputs: Inputs) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique tile ids, a random priority each), the same for every method (seeded by the run): above
    eval.plism_max_tiles shared tiles, a pair keeps those of lowest priority, so every pair and method scores one
    fixed tile subset (as plismbench scores its fixed 8139-tile subset)."""
    ids = np.unique(np.asarray(inputs.m.heldout_tile_ids))
    return ids, inputs.ctx.rng(7).random(len(ids))


def _pair(inputs: Inputs, i: int, j: int, groups: Mapping[str, tuple[str, str]],
          priority: tuple[np.ndarray, np.ndarray]) -> _Pair | str:
    """plismbench's cosine and top-10 of sites i and j over their shared tiles, or why there are none."""
    m, ctx = inputs.m, inputs.ctx
    if m.heldout_tile_ids is None:
        return "no heldout_tile_ids given"
    (rows_i, b_i), (rows_j, b_j) = inputs.blocks[i], inputs.blocks[j]
    ids = np.asarray(m.heldout_tile_ids)
    shared, at_i, at_j = np.intersect1d(ids[rows_i], ids[rows_j], return_indices=True)  # each tile's first row
    a, b = ctx.site_names[i], ctx.site_names[j]
    if len(at_i) < ctx.settings.min_site_samples:
        return (f"{len(at_i)} tiles shared by {a} and {b} (< min_site_samples={ctx.settings.min_site_samples})"
                if len(at_i) else f"no tile of {b} also occurs at {a}")
    if len(shared) > ctx.settings.plism_max_tiles:
        ranks = priority[1][np.searchsorted(priority[0], shared)]
        keep = np.sort(np.argsort(ranks, kind="stable")[:ctx.settings.plism_max_tiles])
        at_i, at_j = at_i[keep], at_j[keep]
    za, zb = np.asarray(m.heldout)[rows_i[at_i]], np.asarray(m.heldout)[rows_j[at_j]]
    cosine = robustness.paired_cosine(za, zb)
    hits_a, hits_b = robustness.retrieval_hits(za, zb, TOP_K)
    side_a = _draws(b_i, at_i, np.column_stack([cosine, hits_a]))
    side_b = _draws(b_j, at_j, np.column_stack([cosine, hits_b]))
    mean = 0.5 * (side_a + side_b)  # a→b and b→a (each weighted by its queries' draws; equal with groups)
    return _Pair((a, b), robustness.pair_group(groups[a], groups[b]), len(at_i), mean[:, 0], mean[:, 1])


def _plism(inputs: Inputs, joint: list[int]) -> tuple[dict[str, dict], dict[str, Estimate], dict]:
    """Per site (paired with the source) and joint plismbench scores, and the pairs' record."""
    ctx = inputs.ctx
    changes = dict(ctx.settings.robustness_site_changes)
    source = ctx.site_names[ctx.source_id]
    groups = {n: robustness.site_factors(n, source, changes) for n in ctx.site_names}
    big = {i for i in range(len(ctx.site_names)) if inputs.size(i) >= ctx.settings.min_site_samples}
    priority = (np.zeros(0), np.zeros(0)) if inputs.m.heldout_tile_ids is None else tile_priority(inputs)
    pairs = {(i, j): _pair(inputs, i, j, groups, priority) for i, j in combinations(joint, 2)}
    per_site = {}
    for i, n in enumerate(ctx.site_names):
        if i == ctx.source_id:
            per_site[n] = dict.fromkeys(("plism_cosine", "plism_top10"),
                                        "reference site (paired with itself: cosine 1, every tile retrieved)")
        elif not {i, ctx.source_id} <= big:
            small = i if i not in big else ctx.source_id
            reason = ctx.too_few(inputs.size(small)) + ("" if small == i else " at the source")
            per_site[n] = dict.fromkeys(("plism_cosine", "plism_top10"), reason)
        else:
            key = (min(i, ctx.source_id), max(i, ctx.source_id))
            pair = pairs[key] if key in pairs else _pair(inputs, *key, groups, priority)
            sides = [inputs.blocks[ctx.source_id][1], inputs.blocks[i][1]]
            per_site[n] = (dict.fromkeys(("plism_cosine", "plism_top10"), pair) if isinstance(pair, str) else {
                "plism_cosine": bootstrap.from_draws(pair.cosine, sides, "no shared tile"),
                "plism_top10": bootstrap.from_draws(pair.top10, sides, "no shared tile")})
    scored, skipped = [], {}
    for (i, j), pair in pairs.items():
        if isinstance(pair, str):
            skipped[f"{ctx.site_names[i]} – {ctx.site_names[j]}"] = pair
        else:
            scored.append(pair)
    record = {"top_k": TOP_K, "site_factors": {ctx.site_names[i]: list(groups[ctx.site_names[i]]) for i in joint},
              "pairs": [{"sites": list(p.sites), "group": p.group, "tiles": p.tiles, "cosine": float(p.cosine[0]),
                         "top10": float(p.top10[0])} for p in scored], "skipped_pairs": skipped}
    if not scored:
        why = (next(iter(skipped.values())) if len(set(skipped.values())) == 1 else
               "no two sites of the joint set share enough tiles" if skipped else
               f"needs at least 2 sites with ≥ min_site_samples rows in the joint set; got "
               f"{[ctx.site_names[i] for i in joint]}")
        return per_site, dict.fromkeys(PLISM_KEYS, Estimate(why, "metric undefined")), record
    summary = robustness.plism_summary(np.stack([p.cosine for p in scored]), np.stack([p.top10 for p in scored]),
                                       [p.group for p in scored])
    record["score_parts"] = ["cosine"] + [f"top10_{g}" for g in robustness.PAIR_GROUPS if f"top10_{g}" in summary]
    sides = [inputs.blocks[i][1] for i in joint]
    out = {}
    for key in PLISM_KEYS:
        part = key.removeprefix("plism_")
        out[key] = (bootstrap.from_draws(summary[part], sides, "a pair without shared tiles") if part in summary else
                    Estimate(f"no {_GROUP_LABELS[part.removeprefix('top10_')]} pair among the joint-set sites "
                             "(eval.robustness_site_changes says what each site changes)", "metric undefined"))
    return per_site, out, record


def _ri(inputs: Inputs, joint: list[int]) -> tuple[dict[int, Estimate], Estimate, dict]:
    """PathoROB's RI per joint site (its rows as queries) and over all, with the graph's record."""
    m, ctx, s = inputs.m, inputs.ctx, inputs.ctx.settings
    names = [ctx.site_names[i] for i in joint]
    if len(joint) < 2:
        reason = f"needs at least 2 sites (centres) with ≥ min_site_samples rows in the joint set; got {names}"
        return {}, Estimate(reason, "metric undefined"), {"sites": names}
    picks = inputs.equal_shares(joint, s.integration_max_samples, inputs.ctx.rng(6))
    rows = np.concatenate([inputs.blocks[i][0][picks[i]] for i in joint])
    labels = np.asarray(m.heldout_labels)[rows]
    if len(np.unique(labels)) < 2:
        reason = f"needs 2 classes; every sampled row has label {labels[0]}"
        return {}, Estimate(reason, "metric undefined"), {"sites": names}
    case_of, cases = (("group", m.heldout_groups) if m.heldout_groups is not None else
                      ("tile", m.heldout_tile_ids) if m.heldout_tile_ids is not None else ("row", np.arange(len(rows))))
    cases = np.asarray(cases)[rows] if case_of != "row" else cases
    centres = np.asarray(m.heldout_sites)[rows]
    so, os = robustness.so_os_counts(np.asarray(m.heldout)[rows], labels, centres, cases, s.ri_neighbors)
    sums, start = {}, 0
    for i in joint:
        n = len(picks[i])
        b = inputs.blocks[i][1]
        sub = Blocks(ids=b.ids[picks[i]], num=b.num, unit=b.unit, counts=b.counts)
        sums[i] = sub.draws() @ bootstrap.block_sums(sub, np.column_stack([so[start:start + n], os[start:start + n]]))
        start += n
    none = (f"no neighbour of the same label at another site nor of another label at the same site among the "
            f"{s.ri_neighbors} nearest (SO + OS = 0)")
    per_site = {i: bootstrap.from_draws(robustness.robustness_index(d[:, 0], d[:, 1]), [inputs.blocks[i][1]], none)
                for i, d in sums.items()}
    total = sum(sums.values())
    joint_ri = bootstrap.from_draws(robustness.robustness_index(total[:, 0], total[:, 1]),
                                    [inputs.blocks[i][1] for i in joint], none)
    record = {"sites": names, "n": int(len(rows)), "per_site_n": {ctx.site_names[i]: int(len(picks[i])) for i in joint},
              "neighbors": s.ri_neighbors, "excluded_neighbours": case_of, "so": int(so.sum()), "os": int(os.sum())}
    return per_site, joint_ri, record


def evaluate(inputs: Inputs) -> Result:
    """plismbench scores per site and over site pairs, PathoROB's RI per site and over the joint set."""
    ctx, s = inputs.ctx, inputs.ctx.settings
    joint = [i for i, n in enumerate(ctx.site_names)
             if (i == ctx.source_id or n in ctx.unseen) and inputs.size(i) >= s.min_site_samples]
    per_site, plism_joint, plism_record = _plism(inputs, joint)
    ri_sites, ri_joint, ri_record = _ri(inputs, joint)
    for i, n in enumerate(ctx.site_names):
        if i in ri_sites:
            per_site[n]["robustness_index"] = ri_sites[i]
        elif inputs.size(i) < s.min_site_samples:
            per_site[n]["robustness_index"] = ctx.too_few(inputs.size(i))
        elif i in joint:
            per_site[n]["robustness_index"] = ri_joint.value  # the joint set's reason applies to its every site
        else:
            per_site[n]["robustness_index"] = "site excluded from summaries, so not in the joint set"
    return Result(per_site, {**plism_joint, "robustness_index": ri_joint},
                  {"robustness": {"plism": plism_record, "ri": ri_record}})


def intro(metrics: Mapping, figure_names: Sequence[str]) -> Intro:
    """Which site pairs fell in which plismbench group, and the RI graph (the first method's; the same for all)."""
    record = next(iter(metrics["methods"].values()), {}).get("robustness", {})
    plism, ri = record.get("plism", {}), record.get("ri", {})
    by_group: dict[str, list[str]] = {}
    for p in plism.get("pairs", []):
        by_group.setdefault(_GROUP_LABELS.get(p["group"], "same scanner and staining"), []).append(" – ".join(p["sites"]))
    pairs = "; ".join(f"{g}: {', '.join(names)}" for g, names in by_group.items())
    tiles = sorted({p["tiles"] for p in plism.get("pairs", [])})
    shared = f"{tiles[0]}–{tiles[-1]}" if len(tiles) > 1 else str(tiles[0]) if tiles else ""
    return Intro(paragraphs=[
        f"plismbench site pairs ({shared} shared tiles each): {pairs}." if pairs else "",
        f"Robustness index: k = {ri['neighbors']} over {ri['n']} rows of {', '.join(ri['sites'])}; neighbours of the "
        f"query's own {ri['excluded_neighbours']} removed." if ri.get("n") else ""])


FAMILY = Family("robustness", SPECS, evaluate, section=SECTION, summary_table=SUMMARY, intro=intro)
