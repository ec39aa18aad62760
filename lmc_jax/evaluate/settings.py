"""The evaluation knobs (config.eval.*) as one validated, frozen value passed through the suite.

Built from the config only (`from_config`): the defaults live in configs/default.py, nowhere else.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from lmc_jax.errors import ConfigError
from lmc_jax.evaluate.kernels.protocol import PROTOCOLS

BOOTSTRAP_UNITS = ("group", "example")
SITE_CHANGES = ("scanner", "staining", "both")  # what a site changes with respect to the source (plismbench groups)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Every number the evaluation suite needs beyond the embeddings; names match config.eval keys."""

    min_site_samples: int  # a site with fewer held-out examples gets undefined distances/AUC
    num_projections: int  # sliced-W2 random directions
    probe_l2: float  # L2 strength of the logistic probe
    probe_val_fraction: float  # share of the source train set (whole groups) kept to pick the F1 threshold
    ece_bins: int  # equal-width probability bins of the ECE and the reliability diagrams
    bootstrap_replicates: int  # 0 disables confidence intervals
    bootstrap_blocks: int  # at most this many resampling blocks per domain (units merged at random above)
    bootstrap_unit: str  # resample whole groups (patients/regions) when known, else examples
    mmd_max_samples: int  # per domain, random subsample for the quadratic-time MMD
    integration_max_samples: int  # over all sites, stratified subsample for silhouette/iLISI/kBET and PathoROB's RI
    site_probe_max_rows: int  # over all sites, equal shares: the site probe's rows (its Newton steps grow with it)
    lisi_neighbors: int  # scib-metrics' default k for iLISI (perplexity k // 3)
    kbet_neighbors: int  # scib-metrics' default k for kBET
    kbet_alpha: float  # kBET test level
    protocols: tuple[str, ...]  # which transfer protocols to run ("cross_site", "leave_one_domain_out")
    protocol_folds: int  # patient-disjoint folds of the protocols
    protocol_max_fit_rows: int  # a protocol probe's fit set above this many rows: a seeded random subset; 0 = all
    signature_folds: int  # grouped CV folds choosing the L1 strength of the sparse signature; 0 skips signatures
    signature_lambdas: int  # points on the L1 path (λ_max down to λ_max / 100)
    signature_stability_rounds: int  # half-sample refits for selection frequencies; 0 disables
    signature_max_rows: int  # the signature is selected on at most this many train rows (whole groups); 0 = all
    detection_radius: float  # px; > 0 adds point-detection F1 per site (30.0 = MIDOG's 7.5 µm at 0.25 µm/px)
    plism_max_tiles: int  # shared tiles per site pair for plismbench's scores (its reference subset: 8139)
    ri_neighbors: int  # k of PathoROB's robustness index (PathoROB's default for Camelyon, its 2-class set: 11)
    robustness_site_changes: tuple[tuple[str, str], ...]  # (site, SITE_CHANGES entry); unlisted sites change both

    def __post_init__(self) -> None:
        checks = {
            "min_site_samples": (self.min_site_samples >= 2, "must be ≥ 2 (a covariance needs two rows)"),
            "num_projections": (self.num_projections >= 1, "must be ≥ 1"),
            "probe_l2": (self.probe_l2 > 0, "must be > 0"),
            "probe_val_fraction": (0 < self.probe_val_fraction < 1, "must be in (0, 1)"),
            "ece_bins": (self.ece_bins >= 2, "must be ≥ 2"),
            "bootstrap_replicates": (self.bootstrap_replicates == 0 or self.bootstrap_replicates >= 50,
                                     "must be 0 (off) or ≥ 50 for a 95% percentile interval"),
            "bootstrap_blocks": (self.bootstrap_blocks >= 2, "must be ≥ 2"),
            "bootstrap_unit": (self.bootstrap_unit in BOOTSTRAP_UNITS, f"choose one of {BOOTSTRAP_UNITS}"),
            "mmd_max_samples": (self.mmd_max_samples >= 2, "must be ≥ 2"),
            "integration_max_samples": (self.integration_max_samples >= 4, "must be ≥ 4"),
            "site_probe_max_rows": (self.site_probe_max_rows >= 4, "must be ≥ 4 (two halves of two sites)"),
            "lisi_neighbors": (self.lisi_neighbors >= 3, "must be ≥ 3 (perplexity = k // 3 ≥ 1)"),
            "kbet_neighbors": (self.kbet_neighbors >= 2, "must be ≥ 2"),
            "kbet_alpha": (0 < self.kbet_alpha < 1, "must be in (0, 1)"),
            "protocols": (set(self.protocols) <= set(PROTOCOLS), f"choose from {PROTOCOLS}"),
            "protocol_folds": (self.protocol_folds >= 3, "must be ≥ 3 (fit, validation and test folds)"),
            "signature_folds": (self.signature_folds == 0 or self.signature_folds >= 2, "must be 0 (skip) or ≥ 2"),
            "signature_lambdas": (self.signature_lambdas >= 2, "must be ≥ 2"),
            "signature_stability_rounds": (self.signature_stability_rounds >= 0, "must be ≥ 0 (0 disables)"),
            "protocol_max_fit_rows": (self.protocol_max_fit_rows == 0 or self.protocol_max_fit_rows >= 1000,
                                      "must be 0 (every row) or ≥ 1000"),
            "signature_max_rows": (self.signature_max_rows == 0 or self.signature_max_rows >= 1000,
                                   "must be 0 (every row) or ≥ 1000"),
            "detection_radius": (self.detection_radius >= 0,
                                 "must be ≥ 0 px (0 = off; 30.0 for MIDOG at 0.25 µm/px)"),
            "plism_max_tiles": (self.plism_max_tiles >= self.min_site_samples,
                                f"must be ≥ min_site_samples={self.min_site_samples} (plismbench: 8139)"),
            "ri_neighbors": (self.ri_neighbors >= 1, "must be ≥ 1 (PathoROB: 11 for Camelyon, 61 for TCGA)"),
            "robustness_site_changes": (
                all(len(p) == 2 and p[1] in SITE_CHANGES for p in self.robustness_site_changes)
                and len({p[0] for p in self.robustness_site_changes}) == len(self.robustness_site_changes),
                f"give (site, change) pairs, each site once, change one of {SITE_CHANGES}"),
        }
        for key, (ok, fix) in checks.items():
            if not ok:
                raise ConfigError(f"config.eval.{key}={getattr(self, key)!r}: {fix}")

    @classmethod
    def from_config(cls, eval_config: Mapping, **overrides) -> Settings:
        """Settings from config.eval (other keys there are ignored), with `overrides` replacing some; a key it
        lacks raises ConfigError naming it."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [name for name in names if name not in eval_config and name not in overrides]
        if missing:
            raise ConfigError(f"config.eval lacks {missing}: start from configs/default.py's config")
        values = {name: overrides.get(name, eval_config.get(name)) for name in names}
        values["protocols"] = tuple(values["protocols"])
        values["robustness_site_changes"] = tuple(tuple(p) for p in values["robustness_site_changes"])
        return cls(**values)

    def replace(self, **changes) -> Settings:
        """A copy with some knobs changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict:
        """The settings as a JSON-ready dict (recorded in metrics.json)."""
        return {k: [list(p) if isinstance(p, tuple) else p for p in v] if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}
