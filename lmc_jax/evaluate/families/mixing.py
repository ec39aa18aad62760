"""Batch mixing over the sites jointly (scib-style silhouette-batch, iLISI, kBET), also broken down per site.

A stratified random subsample of the joint sites (source-standardised embeddings; eval.integration_max_samples,
all rows when it is at least their number) gets one kNN graph: exact in all dimensions up to
integration.EXACT_MAX_ROWS cells; above, the graph of the integration.GRAPH_COMPONENTS leading principal
components (as scanpy/scib build it) from an inverted-file index, with its recall@k against exact neighbours (in
the projection and in all dimensions) in the "mixing" entry's "knn";
per-cell scores are aggregated over all cells (the scib number, the summary's "joint" value) and over each
site's cells (how well that site mixes). Bootstrap draws reweight the cells by their site's block counts;
the kNN graph itself is held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, integration
from lmc_jax.evaluate.kernels.bootstrap import Blocks, Estimate
from lmc_jax.evaluate.families.inputs import Inputs
from lmc_jax.evaluate.families.separation import SECTION, SUMMARY
from lmc_jax.evaluate.families.spec import UNIT, Family, Intro, MetricSpec, Result

_JOINT = ("joint",)
SPECS = (
    MetricSpec(
        "silhouette_batch", "silhouette-batch", "scib-metrics silhouette_batch: within each label, 1 − |silhouette "
        "of the cell w.r.t. its site|, averaged per label then over labels (1 = sites fully mixed, 0 = separated). "
        "Per site: over that site's cells; summary: all cells. Computed with the sites jointly on a stratified "
        "subsample (eval.integration_max_samples).",
        title="Silhouette-batch (1 − |ASW| by site within label; 1 = mixed), this site's cells",
        direction=1, bounds=UNIT, summary=_JOINT, columns=_JOINT),
    MetricSpec(
        "ilisi", "iLISI", "scib-metrics ilisi_knn: median over cells of the inverse Simpson index of site labels "
        "among each cell's k nearest neighbours (Gaussian weights calibrated to perplexity k/3), scaled "
        "(median−1)/(sites−1): 1 = every neighbourhood holds all sites evenly, 0 = one site only. Neighbours: "
        f"exact in all dimensions up to {integration.EXACT_MAX_ROWS:,} cells; above, among the "
        f"{integration.GRAPH_COMPONENTS} leading principal components (scanpy's X_pca graph, as scib scores it) "
        "through an IVF index whose measured recall is in metrics.json (knn).",
        title="iLISI (scaled; 1 = neighbourhoods hold every site evenly), this site's cells",
        direction=1, bounds=UNIT, summary=_JOINT, columns=_JOINT, console=_JOINT),
    MetricSpec(
        "kbet", "kBET acceptance", "scib-metrics kbet acceptance rate: share of cells whose k-neighbourhood site "
        "counts pass a χ² test (level eval.kbet_alpha) against the global site frequencies; ≈ 1 − α for perfectly "
        "mixed sites. This is scib_metrics.kbet on a plain kNN graph (iLISI's graph), not kbet_per_label's "
        "diffusion-map graph.",
        title="kBET acceptance rate, this site's cells",
        direction=1, bounds=UNIT, summary=_JOINT, columns=_JOINT, console=_JOINT, short="kBET"),
)
KEYS = tuple(s.key for s in SPECS)


def _subsample(site_sizes: Mapping[str, int], max_total: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Row indices per site: all rows, or an equal random share of max_total, whichever is fewer."""
    quota = max(1, max_total // max(len(site_sizes), 1))
    return {s: np.sort(rng.choice(n, min(n, quota), replace=False)) for s, n in site_sizes.items()}


def mixing_estimates(sites: Mapping[str, tuple[np.ndarray, np.ndarray, Blocks]], *, max_samples: int,
                     lisi_neighbors: int, kbet_neighbors: int, kbet_alpha: float,
                     rng: np.random.Generator) -> tuple[dict[str, dict[str, Estimate]], dict[str, Estimate], dict]:
    """Per-site and joint silhouette-batch (1 − |ASW|), scaled iLISI and kBET acceptance.

    `sites` maps a site name to (z (n, D), labels (n,), Blocks); at least 2 sites. Returns
    (per site {metric: Estimate}, joint {metric: Estimate}, info about the subsample and k).
    """
    names = list(sites)
    if len(names) < 2:
        reason = f"needs at least 2 sites with enough examples; got {names}"
        return {}, dict.fromkeys(KEYS, Estimate(reason, "metric undefined")), {"sites": names}
    picks = _subsample({s: len(sites[s][0]) for s in names}, max_samples, rng)
    z = np.concatenate([sites[s][0][picks[s]] for s in names])
    labels = np.concatenate([sites[s][1][picks[s]] for s in names])
    batch = np.concatenate([np.full(len(picks[s]), i) for i, s in enumerate(names)])
    weights = np.concatenate([sites[s][2].draws()[:, sites[s][2].ids[picks[s]]] for s in names], axis=1)
    k_lisi, k_kbet = min(lisi_neighbors, len(z)), min(kbet_neighbors, len(z))
    indices, distances, graph = integration.knn_graph(z, max(k_lisi, k_kbet))
    lisi = integration.lisi(indices[:, :k_lisi], distances[:, :k_lisi], batch)
    accepted, _ = integration.kbet_cells(indices[:, :k_kbet], batch, kbet_alpha)
    silhouette = integration.silhouette_batch_cells(z, labels, batch)

    def metrics(cells: np.ndarray, blocks: list[Blocks]) -> dict[str, Estimate]:
        w = weights if len(cells) == len(z) else weights[:, cells]
        return {
            "silhouette_batch": bootstrap.from_draws(
                integration.silhouette_batch_score(silhouette[cells], labels[cells], w),
                                          blocks, "every label group has a single site (scib skips them)"),
            "ilisi": bootstrap.from_draws(integration.ilisi_score(lisi[cells], len(names), w), blocks, "no cells"),
            "kbet": bootstrap.from_draws(bootstrap.ratio(w @ accepted[cells], w.sum(axis=1)), blocks, "no cells"),
        }

    per_site = {s: metrics(np.flatnonzero(batch == i), [sites[s][2]]) for i, s in enumerate(names)}
    joint = metrics(np.arange(len(z)), [sites[s][2] for s in names])
    info = {"sites": names, "n": int(len(z)), "per_site_n": {s: int(len(picks[s])) for s in names},
            "lisi_neighbors": k_lisi, "kbet_neighbors": k_kbet, "kbet_alpha": kbet_alpha, "knn": graph}
    return per_site, joint, info


def evaluate(inputs: Inputs) -> Result:
    """Mixing of the source with the unseen sites that have enough rows; the other sites get reasons."""
    ctx, s = inputs.ctx, inputs.ctx.settings
    if isinstance(inputs.sites, str):
        return Result.undefined(ctx.site_names, KEYS, inputs.sites, "mixing")
    joined = inputs.joint_site_ids()
    mixed, joint, info = mixing_estimates(
        {ctx.site_names[i]: (t.z, t.labels, t.blocks) for i in joined for t in [inputs.sites[i]]},
        max_samples=s.integration_max_samples, lisi_neighbors=s.lisi_neighbors, kbet_neighbors=s.kbet_neighbors,
        kbet_alpha=s.kbet_alpha, rng=ctx.rng(2))
    per_site = {}
    for i, n in enumerate(ctx.site_names):
        small = inputs.size(i) < s.min_site_samples
        per_site[n] = mixed.get(n) or dict.fromkeys(KEYS, ctx.too_few(inputs.size(i)) if small else
                                                    "site excluded from summaries, so not in the joint mixing set")
    return Result(per_site, joint, {"mixing": info})


def intro(metrics: Mapping, figure_names: Sequence[str]) -> Intro:
    """The subsample and neighbourhood sizes the mixing metrics used (the first method's; the same for all)."""
    mixing = next(iter(metrics["methods"].values()), {}).get("mixing", {})
    return Intro(paragraphs=[
        f"Mixing metrics use a stratified subsample of {mixing.get('n')} cells over the sites "
        f"{', '.join(mixing.get('sites', []))} (k = {mixing.get('lisi_neighbors')} for iLISI, "
        f"{mixing.get('kbet_neighbors')} for kBET)" + _graph(mixing.get("knn", {})) + "." if mixing.get("n") else ""])


def _graph(knn: Mapping) -> str:
    """How the kNN graph was built, for the intro: nothing for the exact graph."""
    if knn.get("method") != "ivf":
        return ""
    return (f"; their kNN graph is on the {knn['components']} leading principal components, from an IVF index "
            f"({knn['lists']} lists, {knn['probes']} probed) with recall@k {knn['recall_at_k']:.3f} against exact "
            f"neighbours there ({knn['recall_at_k_full_dims']:.3f} against exact neighbours in all dimensions) on "
            f"{knn['recall_queries']} rows")


FAMILY = Family("mixing", SPECS, evaluate, section=SECTION, summary_table=SUMMARY, intro=intro)
