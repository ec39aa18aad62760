"""One method's distances from the source site to every other site, with block-bootstrap intervals.

Each site is given as its embeddings z-scored with the source site's statistics, its raw embeddings,
labels, optional tile ids and its bootstrap `Blocks`. Each value returned is a `bootstrap.Estimate`,
a plain float (reported without an interval) or a reason string (undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import numpy as np

from lmc_jax.evaluate import bootstrap, mmd, separation
from lmc_jax.evaluate.bootstrap import Blocks, Estimate

DISTANCES = ("fd", "fd_raw", "fd_class", "sliced_w2", "mmd", "top1")
BOUNDS = {"fd": (0.0, np.inf), "fd_class": (0.0, np.inf), "top1": (0.0, 1.0)}  # natural ranges (MMD² may be < 0)
NO_CI_RAW = "raw-scale value, reported for reference without an interval"
NO_CI_SLICED = "no interval: each bootstrap draw would need a full re-sort of every projection"


@dataclass(frozen=True)
class Site:
    """One site's held-out rows."""

    z: np.ndarray  # (n, D) z-scored with the source site's statistics
    raw: np.ndarray  # (n, D)
    labels: np.ndarray  # (n,)
    tile_ids: np.ndarray | None  # (n,)
    blocks: Blocks


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


def site_distances(source: Site, targets: dict[str, Site], *, key: jax.Array, num_projections: int,
                   min_n: int, mmd_max_samples: int, rng: np.random.Generator) -> dict[str, dict]:
    """{site: {distance: Estimate | float | reason}} for every target site (each with ≥ min_n rows).

    FD, class FD and MMD resample source and target blocks jointly; sliced W2 and raw FD have no interval.
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
