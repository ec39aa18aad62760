"""Training objectives composed from loss terms: `config.objectives` names them, the loss is their sum.

Each module of this package except `base` is one term, named after the module, exporting `TERM` (an
object following `base.Term`). A new objective is a new module here, not a branch in the train step.
"""

from __future__ import annotations

import importlib
import pkgutil

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmc_jax.errors import ConfigError
from lmc_jax.objectives.base import Batch, Features, HeadFactory, Term
from lmc_jax.stain.augment import StainAugConfig, make_views
from lmc_jax.stain.scale import ScaleAugConfig

TERMS: dict[str, Term] = {
    info.name: importlib.import_module(f"{__name__}.{info.name}").TERM
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda info: info.name) if info.name != "base"
}


def terms(config: ml_collections.ConfigDict) -> dict[str, Term]:
    """The run's terms by name, in config order; an unknown name raises ConfigError naming the choices."""
    unknown = [name for name in config.objectives if name not in TERMS]
    if unknown:
        raise ConfigError(f"config.objectives names {unknown}; choose from {sorted(TERMS)}")
    return {name: TERMS[name] for name in config.objectives}


def heads(config: ml_collections.ConfigDict) -> dict[str, HeadFactory]:
    """Modules the terms train beside encoder and projector, by attribute name (built in term order)."""
    return dict(h for term in terms(config).values() if (h := term.head(config)) is not None)


def views(key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, int]]:
    """All images of one step [K + E, B, C, C, 3]: the K views of config.lmc, then each term's renderings.

    Returns them with the number of renderings per term (in order), to split the features again.
    """
    stain = StainAugConfig.from_config(config.lmc.stain) if config.lmc.stain_views else None
    scale = ScaleAugConfig.from_config(config.lmc.scale) if config.lmc.scale.views else None
    parts = [make_views(key, tiles, num_views=config.lmc.num_views, crop_size=config.data.crop_size, stain=stain,
                        scale=scale)]
    counts = {}
    for name, term in terms(config).items():
        extra = term.renderings(key, tiles, config)
        if extra is not None:
            parts.append(extra)
            counts[name] = extra.shape[0]
    return (jnp.concatenate(parts) if len(parts) > 1 else parts[0]), counts


def split_features(embedded: jax.Array, num_views: int, counts: dict[str, int]) -> Features:
    """Encoder features [K + E, B, W] with where each term's renderings start."""
    offsets, start = {}, num_views
    for name, count in counts.items():
        offsets[name], start = start, start + count
    return Features(embedded, num_views, offsets)


def loss(model: nnx.Module, features: Features, batch: Batch, progress: jax.Array,
         config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Σ of the terms' losses (in config order) and the union of their metrics."""
    total, metrics = None, {}
    for term in terms(config).values():
        value, logged = term.loss(model, features, batch, progress, config)
        total = value if total is None else total + value
        metrics.update(logged)
    return total, metrics
