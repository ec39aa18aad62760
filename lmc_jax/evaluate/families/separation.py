"""Separation of every site from the source: FD/D, raw FD, class FD/D, sliced W2, MMD², same-tile top-1.

Each site is its embeddings z-scored with the source site's statistics (inputs.Site); FD, class FD and MMD
resample source and target blocks jointly, sliced W2 and raw FD are reported without an interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jax
import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, mmd, separation
from lmc_jax.evaluate.kernels.bootstrap import Blocks, Estimate
from lmc_jax.evaluate.families.inputs import Inputs, Site
from lmc_jax.evaluate.families.layout import figures_present
from lmc_jax.evaluate.families.spec import UNIT, Family, Intro, MetricSpec, Result, SummaryTable

NO_CI_RAW = "raw-scale value, reported for reference without an interval"
NO_CI_SLICED = "no interval: each bootstrap draw would need a full re-sort of every projection"
SECTION = "Separation and mixing per site"
SUMMARY = SummaryTable("Separation from the source (means over unseen sites) and batch mixing (all sites)")
_SUMMARY = ("mean_unseen",)

SPECS = (
    MetricSpec(
        "fd", "FD/D", "Fréchet distance ‖μ1−μ2‖²+Tr(Σ1+Σ2−2(Σ1Σ2)^½) between Gaussian fits of the source and the "
        "site's held-out embeddings, both z-scored with the source held-out statistics (= squared W2 of the Gaussian "
        "fits), divided by the embedding width D = the source's own total variance after z-scoring, so encoders of "
        "different width and scale are comparable. Lower = closer to the source = more invariant.",
        title="Fréchet distance / D to the source site (source-standardised embeddings; lower = closer)",
        direction=-1, bounds=(0.0, np.inf), columns=_SUMMARY, console=_SUMMARY),
    MetricSpec(
        "fd_raw", "raw FD", "The same Fréchet distance on the raw embeddings; depends on the encoder's scale, not "
        "comparable across methods (no interval).",
        title="Fréchet distance on raw embeddings (scale-dependent; for reference only)",
        direction=-1, no_interval=NO_CI_RAW, reference=True),
    MetricSpec(
        "fd_class", "class FD/D", "Class-conditional FD: mean over labels of the standardised FD / D between "
        "same-label source and site embeddings (separates stain shift from label-mix shift).",
        title="Class-conditional Fréchet distance / D to the source site",
        direction=-1, bounds=(0.0, np.inf), columns=_SUMMARY),
    MetricSpec(
        "sliced_w2", "sliced W2", "Sliced 2-Wasserstein distance (not squared) between the standardised SAMPLES of "
        "source and site, exact 1-D W2 along random unit directions, root-mean-square over directions; no Gaussian "
        "assumption (no interval: every bootstrap draw would need a full re-sort).",
        title="Sliced 2-Wasserstein distance to the source site (standardised samples)",
        direction=-1, no_interval=NO_CI_SLICED, columns=_SUMMARY),
    MetricSpec(
        "mmd", "MMD²", "Unbiased squared maximum mean discrepancy (Gretton et al. 2012) with an RBF kernel "
        "exp(−‖a−b‖²/2σ²) on standardised embeddings, σ = median pairwise distance among source embeddings (one "
        "kernel per method, all sites); computed on a random subsample of eval.mmd_max_samples rows per site. Can be "
        "slightly negative; 0 = same distribution.",
        title="Unbiased RBF MMD² to the source site (standardised; median-heuristic kernel)",
        direction=-1, columns=_SUMMARY, console=_SUMMARY),  # MMD² may be < 0: no bounds
    MetricSpec(
        "top1", "same-tile top-1", "Fraction of the site's tiles whose nearest source-site embedding (cosine, "
        "standardised) is the same tile.",
        title="Same-tile top-1 retrieval against the source site",
        direction=1, bounds=UNIT, columns=_SUMMARY, console=_SUMMARY),
)
KEYS = tuple(s.key for s in SPECS)


@dataclass(frozen=True)
class _Moments:
    """A site's block moments: all rows, and each label's rows (same centre, so the labels add up to all)."""

    total: separation.BlockMoments
    by_label: dict[int, separation.BlockMoments]


def _moments(site: Site) -> _Moments:
    """One pass over the site's rows per label; the total is the sum of the labels' moments."""
    centre = site.z.mean(axis=0, dtype=np.float64)
    by_label = {int(c): separation.block_moments(site.z[site.labels == c], site.blocks.ids[site.labels == c],
                                                 site.blocks.num, centre=centre) for c in np.unique(site.labels)}
    return _Moments(separation.sum_moments(list(by_label.values())), by_label)


def _fd_draws(source: Site, src: separation.BlockMoments, targets: Sequence[tuple[Site, separation.BlockMoments]]
              ) -> list[np.ndarray]:
    """FD / D of each target from the source for the point and every draw."""
    out = separation.frechet_replicates(src, source.blocks.draws(), [(m, t.blocks.draws()) for t, m in targets])
    return list(out / source.z.shape[1])


def _class_fd(source: Site, src: _Moments, targets: Sequence[tuple[Site, _Moments]],
              min_n: int) -> list[Estimate | str]:
    """Mean over the source's labels of same-label FD / D, or the reason (a label below min_n rows on a side)."""
    labels = sorted(src.by_label)
    reasons = []
    for t, _ in targets:
        sizes = [(c, int(np.sum(source.labels == c)), int(np.sum(t.labels == c))) for c in labels]
        short = next(((c, a, b) for c, a, b in sizes if min(a, b) < min_n), None)
        reasons.append(f"label {short[0]}: {short[1]} source / {short[2]} site examples "
                       f"(< min_site_samples={min_n})" if short else None)
    eligible = [(t, m) for (t, m), r in zip(targets, reasons) if r is None]
    per_label = [_fd_draws(source, src.by_label[c], [(t, m.by_label[c]) for t, m in eligible]) for c in labels]
    means = iter(np.mean(per_label, axis=0)) if eligible else iter(())
    return [r if r else bootstrap.from_draws(next(means), [source.blocks, t.blocks], "a label has < 2 rows")
            for r, (t, _) in zip(reasons, targets)]


def _mmd(source: Site, targets: Sequence[Site], max_samples: int, rng: np.random.Generator) -> list[Estimate]:
    """Unbiased RBF MMD² of each target vs the source on ≤ max_samples random rows per site (σ: source median)."""
    def sample(site: Site) -> tuple[np.ndarray, np.ndarray]:
        keep = np.sort(rng.choice(len(site.z), min(max_samples, len(site.z)), replace=False))
        return site.z[keep], site.blocks.ids[keep]

    zs, ids_s = sample(source)
    sigma = mmd.median_bandwidth(zs, rng)
    if sigma <= 0:
        return [Estimate("every source embedding is identical: no kernel width (median heuristic σ = 0)",
                         "metric undefined")] * len(targets)
    b_s = source.blocks.num
    kxx = mmd.kernel_block_sums(zs, ids_s, b_s, zs, ids_s, b_s, sigma)
    nx, draws_s = np.bincount(ids_s, minlength=b_s).astype(np.float64), source.blocks.draws()
    out = []
    for t in targets:
        zt, ids_t = sample(t)
        b_t = t.blocks.num
        kyy = mmd.kernel_block_sums(zt, ids_t, b_t, zt, ids_t, b_t, sigma)
        kxy = mmd.kernel_block_sums(zs, ids_s, b_s, zt, ids_t, b_t, sigma)
        ny = np.bincount(ids_t, minlength=b_t).astype(np.float64)
        values = mmd.mmd2_from_block_sums(kxx, kyy, kxy, nx, ny, draws_s, t.blocks.draws())
        out.append(bootstrap.from_draws(values, [source.blocks, t.blocks], "fewer than 2 rows"))
    return out


def _top1(source: Site, target: Site) -> Estimate | str:
    """Same-tile retrieval rate of the target's tiles among the source's, or the reason it is undefined."""
    if source.tile_ids is None or target.tile_ids is None:
        return "no heldout_tile_ids given"
    query = np.isin(target.tile_ids, source.tile_ids)
    if not query.any():
        return "no tile of this site also occurs at the source site"
    hits = np.asarray(separation.same_id_hits(target.z[query], target.tile_ids[query], source.z, source.tile_ids))
    sub = Blocks(ids=target.blocks.ids[query], num=target.blocks.num, unit=target.blocks.unit,
                 counts=target.blocks.counts)
    sums = bootstrap.block_sums(sub, np.column_stack([hits, np.ones_like(hits)]))
    return bootstrap.estimate(sub, lambda c: bootstrap.ratio(c @ sums[:, 0], c @ sums[:, 1]), "no query drawn")


def site_distances(source: Site, targets: Mapping[str, Site], *, key: jax.Array, num_projections: int,
                   min_n: int, mmd_max_samples: int, rng: np.random.Generator) -> dict[str, dict]:
    """{site: {distance: Estimate | float | reason}} for every target site (each with ≥ min_n rows).

    Sliced W2 uses `key` (the same directions) for every site.
    """
    names, sites = list(targets), list(targets.values())
    if not sites:
        return {}
    src, moments = _moments(source), [_moments(t) for t in sites]
    fd = _fd_draws(source, src.total, [(t, m.total) for t, m in zip(sites, moments)])
    class_fd = _class_fd(source, src, list(zip(sites, moments)), min_n)
    mmds = _mmd(source, sites, mmd_max_samples, rng)
    raw_mean, raw_cov = separation.gaussian_fit(source.raw)
    out = {}
    for j, (name, t) in enumerate(zip(names, sites)):
        out[name] = {
            "fd": bootstrap.from_draws(fd[j], [source.blocks, t.blocks], "fewer than 2 rows"),
            "fd_raw": Estimate(separation.frechet_from_stats(raw_mean, raw_cov, *separation.gaussian_fit(t.raw)),
                               NO_CI_RAW),
            "fd_class": class_fd[j],
            "sliced_w2": Estimate(separation.sliced_wasserstein(source.z, t.z, key, num_projections), NO_CI_SLICED),
            "mmd": mmds[j],
            "top1": _top1(source, t),
        }
    return out


def evaluate(inputs: Inputs) -> Result:
    """Distances of every site from the source; the source itself and small sites get reasons."""
    ctx, s = inputs.ctx, inputs.ctx.settings
    if isinstance(inputs.sites, str):
        return Result({n: dict.fromkeys(KEYS, inputs.sites) for n in ctx.site_names})
    targets = {n: inputs.sites[i] for i, n in enumerate(ctx.site_names)
               if i != ctx.source_id and inputs.size(i) >= s.min_site_samples}
    distances = site_distances(inputs.sites[ctx.source_id], targets, key=ctx.key, num_projections=s.num_projections,
                               min_n=s.min_site_samples, mmd_max_samples=s.mmd_max_samples, rng=ctx.rng(1))
    per_site = {}
    for i, n in enumerate(ctx.site_names):
        if i == ctx.source_id:
            per_site[n] = dict.fromkeys(KEYS, "reference site (its distance to itself is 0 by definition)")
        else:
            per_site[n] = distances.get(n) or dict.fromkeys(KEYS, ctx.too_few(inputs.size(i)))
    return Result(per_site)


def intro(metrics: Mapping, figure_names: Sequence[str]) -> Intro:
    return Intro(figures=figures_present(("embeddings",), figure_names))


FAMILY = Family("separation", SPECS, evaluate, section=SECTION, summary_table=SUMMARY, intro=intro)
