"""One method's batch-mixing metrics over the sites jointly (scib-style), broken down per site, with intervals.

A stratified random subsample of the joint sites (source-standardised embeddings) gets one kNN
graph; per-cell silhouette-batch, LISI and kBET scores are aggregated over all cells (the scib
number) and over each site's cells (how well that site mixes). Bootstrap draws reweight the cells
by their site's block counts; the kNN graph itself is held fixed.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lmc_jax.evaluate import bootstrap, integration
from lmc_jax.evaluate.bootstrap import Blocks, Estimate

MIXING = ("silhouette_batch", "ilisi", "kbet")
BOUNDS = dict.fromkeys(MIXING, (0.0, 1.0))  # natural ranges, for clipping intervals


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
        return {}, dict.fromkeys(MIXING, Estimate(reason, "metric undefined")), {"sites": names}
    picks = _subsample({s: len(sites[s][0]) for s in names}, max_samples, rng)
    z = np.concatenate([sites[s][0][picks[s]] for s in names])
    labels = np.concatenate([sites[s][1][picks[s]] for s in names])
    batch = np.concatenate([np.full(len(picks[s]), i) for i, s in enumerate(names)])
    weights = np.concatenate([sites[s][2].draws()[:, sites[s][2].ids[picks[s]]] for s in names], axis=1)
    k_lisi, k_kbet = min(lisi_neighbors, len(z)), min(kbet_neighbors, len(z))
    indices, distances = integration.knn(z, max(k_lisi, k_kbet))
    lisi = integration.lisi(indices[:, :k_lisi], distances[:, :k_lisi], batch)
    accepted, _ = integration.kbet_cells(indices[:, :k_kbet], batch, kbet_alpha)
    silhouette = integration.silhouette_batch_cells(z, labels, batch)

    def metrics(cells: np.ndarray, blocks: list[Blocks]) -> dict[str, Estimate]:
        w = weights[:, cells]
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
            "lisi_neighbors": k_lisi, "kbet_neighbors": k_kbet, "kbet_alpha": kbet_alpha}
    return per_site, joint, info
