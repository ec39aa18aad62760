"""LMC's term: the global-batch Barlow-Twins cross-correlation between the K views' projections."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from lmc_jax.losses import lmc_loss
from lmc_jax.objectives.base import Batch, Features, HeadFactory


class CrossCorrelation:
    """Σᵢ(1−Cᵢᵢ)² + λΣᵢ≠ⱼCᵢⱼ² averaged over view pairs (λ = config.lmc.off_diagonal_weight); uses the projector."""

    def renderings(self, key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> None:
        return None

    def head(self, config: ml_collections.ConfigDict) -> tuple[str, HeadFactory] | None:
        return None

    def loss(self, model: nnx.Module, features: Features, batch: Batch, progress: jax.Array,
             config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
        return lmc_loss(model.projector(features.views), config.lmc.off_diagonal_weight)


TERM = CrossCorrelation()
