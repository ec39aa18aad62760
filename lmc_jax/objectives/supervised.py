"""The supervised term (the second paper's baseline): a linear classifier on every view's encoder features,
cross-entropy on the tiles' `label` (rows labelled −1, unlabelled, are skipped). Knobs: `config.supervised`."""

from __future__ import annotations

import jax
import ml_collections
from flax import nnx

from lmc_jax.losses import masked_cross_entropy
from lmc_jax.models.vit import DomainHead
from lmc_jax.objectives.base import Batch, Features, HeadFactory

HEAD = "classifier"


class Supervised:
    """supervised.weight × the mean cross-entropy over the K views (each view carries its tile's label)."""

    def renderings(self, key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> None:
        return None

    def head(self, config: ml_collections.ConfigDict) -> tuple[str, HeadFactory]:
        classes = config.supervised.num_classes
        return HEAD, lambda width, dtype, rngs: DomainHead(width, (), dtype=dtype, rngs=rngs, outputs=classes)

    def loss(self, model: nnx.Module, features: Features, batch: Batch, progress: jax.Array,
             config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
        logits = getattr(model, HEAD)(features.views)  # [K, B, classes]
        loss, accuracy = masked_cross_entropy(logits, jax.numpy.broadcast_to(batch["label"], logits.shape[:2]))
        return config.supervised.weight * loss, dict(supervised_loss=loss, supervised_accuracy=accuracy)


TERM = Supervised()
