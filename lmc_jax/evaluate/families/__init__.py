"""The metric families the evaluation suite runs, in order: each declares its metrics once (spec.MetricSpec rows)
and computes them (`evaluate`); the suite's values, notes and bounds and the report's tables come from here."""

from lmc_jax.evaluate.families import (detection, mixing, probe, protocols, robustness, separation, signatures,
                                      site_probe)
from lmc_jax.evaluate.families.spec import Family, MetricSpec

# Order = per-site keys, notes, summary values, summary columns and report sections.
FAMILIES: tuple[Family, ...] = (separation.FAMILY, mixing.FAMILY, site_probe.FAMILY, probe.FAMILY, detection.FAMILY,
                                protocols.FAMILY, signatures.FAMILY, robustness.FAMILY)
# Where the families' method-level entries stand in metrics.json (schema 2 layout); others follow in family order.
ENTRY_ORDER = ("probe", "detection", "reliability", "mixing", "site_probe", "signature", "protocols", "robustness")


def all_specs(families: tuple[Family, ...] | None = None) -> list[MetricSpec]:
    """Every spec of `families` (default: FAMILIES), in order."""
    return [s for f in (FAMILIES if families is None else families) for s in f.specs]
