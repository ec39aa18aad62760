"""What every family's `evaluate` gets for one method: its embeddings, the run's context, the bootstrap blocks,
and the pieces several families share (source-standardised sites, the fitted probe), each computed once."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import jax
import numpy as np

from lmc_jax.evaluate.kernels import bootstrap, probe, transfer
from lmc_jax.evaluate.kernels.bootstrap import Blocks
from lmc_jax.evaluate.kernels.separation import reference_stats
from lmc_jax.evaluate.settings import Settings


@dataclass(frozen=True)
class MethodEmbeddings:
    """One method's embeddings: the training split for the probe, held-out set over all sites."""

    train: np.ndarray  # (N_tr, D) training split (the source site, or the sites trained on), train regions
    train_labels: np.ndarray  # (N_tr,) in {0, 1}
    heldout: np.ndarray  # (M, D) all sites, held-out regions
    heldout_labels: np.ndarray  # (M,) in {0, 1}
    heldout_sites: np.ndarray  # (M,) int index into site_names
    heldout_tile_ids: np.ndarray | None = None  # (M,) same id = same tissue tile rendered at different sites
    train_groups: np.ndarray | None = None  # (N_tr,) patient/slide/region key: folds and bootstrap keep groups whole
    heldout_groups: np.ndarray | None = None  # (M,) same key space as train_groups
    train_sites: np.ndarray | None = None  # (N_tr,) site index of each train row; None = all the source site
    # Point detection (with settings.detection_radius > 0): top-left (y, x) of each tile within its image (its group)
    heldout_coords: np.ndarray | None = None  # (M, 2); needs train_coords, both groups and tile_size
    train_coords: np.ndarray | None = None  # (N_tr, 2): the validation images that pick the detection threshold
    tile_size: int | None = None  # tile edge in px: a tile's point is its centre, coords + tile_size / 2


@dataclass(frozen=True)
class Context:
    """The run's sites, settings and key, the same for every method."""

    site_names: list[str]
    source_id: int
    unseen: list[str]  # sites in the summary means (not the source, not excluded)
    summary_exclude: tuple[str, ...]
    settings: Settings
    key: jax.Array
    seed: int

    def rng(self, *purpose: int) -> np.random.Generator:
        """A generator fixed by the evaluation key and a purpose, identical across methods (paired comparisons)."""
        return np.random.default_rng([self.seed, *purpose])

    def too_few(self, n: int) -> str:
        """Why a site with n held-out examples gets no value."""
        return f"{n} held-out examples (< min_site_samples={self.settings.min_site_samples})"


@dataclass(frozen=True)
class Site:
    """One site's held-out rows."""

    z: np.ndarray  # (n, D) z-scored with the source site's statistics
    raw: np.ndarray  # (n, D)
    labels: np.ndarray  # (n,)
    tile_ids: np.ndarray | None  # (n,)
    blocks: Blocks


@dataclass(frozen=True)
class FittedProbe:
    """The probe fit on source train less a group-disjoint validation part (which picks its threshold)."""

    fitted: transfer.SourceProbe | str  # or why it is not fit
    val: np.ndarray  # the validation rows of the train split
    scores: np.ndarray | None  # P(y=1) on every held-out row; None without a probe


class Inputs:
    """One method's embeddings in the run's context, with the shared pieces computed on first use."""

    def __init__(self, m: MethodEmbeddings, ctx: Context):
        self.m, self.ctx = m, ctx
        s = ctx.settings
        sites = np.asarray(m.heldout_sites)
        groups = np.asarray(m.heldout_groups) if s.bootstrap_unit == "group" and m.heldout_groups is not None else None
        blocks = bootstrap.make_blocks(sites, groups, max_blocks=s.bootstrap_blocks,
                                       replicates=s.bootstrap_replicates, rng=ctx.rng(0))
        # rows and bootstrap blocks of every site (groups shared across sites as units when known and asked for)
        self.blocks: dict[int, tuple[np.ndarray, Blocks]] = {
            i: (rows, blocks.subset(rows)) for i in range(len(ctx.site_names))
            for rows in [np.flatnonzero(sites == i)]}

    def size(self, i: int) -> int:
        return len(self.blocks[i][0])

    def joint_site_ids(self) -> list[int]:
        """The source, then the unseen sites with ≥ min_site_samples held-out rows: the sites scored jointly."""
        ctx = self.ctx
        return [ctx.source_id] + [i for i, n in enumerate(ctx.site_names)
                                  if n in ctx.unseen and self.size(i) >= ctx.settings.min_site_samples]

    def equal_shares(self, joint: Sequence[int], max_total: int, rng: np.random.Generator) -> dict[int, np.ndarray]:
        """Sorted positions within each joint site's rows: all, or an equal random share of max_total, whichever
        is fewer."""
        quota = max(1, max_total // max(len(joint), 1))
        return {i: np.sort(rng.choice(self.size(i), min(self.size(i), quota), replace=False)) for i in joint}

    @cached_property
    def sites(self) -> dict[int, Site] | str:
        """Every site's rows z-scored with the source's held-out statistics, or why there is nothing to scale by."""
        s, raw = self.ctx.settings, np.asarray(self.m.heldout, np.float32)
        src_rows = self.blocks[self.ctx.source_id][0]
        if len(src_rows) < s.min_site_samples:
            return f"source site has {len(src_rows)} held-out examples (< min_site_samples={s.min_site_samples})"
        if np.sqrt(np.mean(np.var(raw[src_rows], axis=0, dtype=np.float64))) <= \
                1e-9 * max(float(np.sqrt(np.mean(raw[src_rows].astype(np.float64) ** 2))), 1e-30):
            return "source-site embeddings are constant (collapsed encoder): nothing to standardise distances by"
        mean, std = reference_stats(raw[src_rows])
        labels, ids = np.asarray(self.m.heldout_labels), self.m.heldout_tile_ids

        def site(rows: np.ndarray, b: Blocks) -> Site:  # site by site: no full-size z-scored copy (as `standardize`)
            x = raw[rows]
            return Site(((x - mean) / std).astype(np.float32), x, labels[rows],
                        None if ids is None else np.asarray(ids)[rows], b)

        return {i: site(rows, b) for i, (rows, b) in self.blocks.items()}

    @cached_property
    def probe(self) -> FittedProbe:
        """The source probe, its validation rows and its P(y=1) on every held-out row."""
        m, s = self.m, self.ctx.settings
        train, y_train = np.asarray(m.train), np.asarray(m.train_labels)
        groups = None if m.train_groups is None else np.asarray(m.train_groups)
        fit, val = transfer.split_validation(y_train, groups, s.probe_val_fraction, self.ctx.rng(3))
        fitted = transfer.fit_source_probe(train[fit], y_train[fit], train[val], y_train[val], s.probe_l2)
        if isinstance(fitted, str):
            return FittedProbe(fitted, val, None)
        return FittedProbe(fitted, val, np.asarray(probe.predict_proba(fitted.params, np.asarray(m.heldout))))

    def each_site(self, keys: Sequence[str], compute: Callable[[str, np.ndarray, Blocks], dict]) -> dict[str, dict]:
        """compute(site, rows, blocks) for each site with ≥ min_site_samples held-out rows; the others get `keys`
        undefined with the reason."""
        out = {}
        for i, n in enumerate(self.ctx.site_names):
            rows, b = self.blocks[i]
            out[n] = (compute(n, rows, b) if len(rows) >= self.ctx.settings.min_site_samples
                      else dict.fromkeys(keys, self.ctx.too_few(len(rows))))
        return out
