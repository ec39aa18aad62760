"""DANN's term: a domain head, reached through gradient reversal, must not tell view 0 from a stain rendering.

The rendering draws one view of the training stain family (`config.lmc.stain`) from its own key stream, so
the K views are the same with and without this term. Knobs: `config.dann` (weight, gamma, hidden_dims).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmc_jax.losses import dann_schedule, domain_adversarial_loss, grad_reverse
from lmc_jax.models.vit import DomainHead
from lmc_jax.objectives.base import Features, HeadFactory
from lmc_jax.stain.augment import StainAugConfig, make_views

RENDERING_STREAM = 0x44414E4E
"""fold_in tag ("DANN") of the rendering's key: independent of the K views' keys (0 … K−1)."""
HEAD = "domain_head"


def domain_terms(head: nnx.Module, source: jax.Array, shifted: jax.Array,
                 reversal: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Domain loss of `head` telling source features [B, W] (label 0) from stain-shifted ones (label 1).

    The head sees grad_reverse(features, reversal): it descends the loss, the encoder ascends it × reversal.
    """
    features = jnp.stack([source, shifted])  # [2, B, W]
    labels = jnp.broadcast_to(jnp.arange(2, dtype=jnp.float32)[:, None], features.shape[:2])
    logits = head(grad_reverse(features, reversal))
    loss = domain_adversarial_loss(logits, labels)
    accuracy = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))
    return loss, dict(dann_loss=loss, dann_lambda=jnp.asarray(reversal, jnp.float32), dann_accuracy=accuracy)


class Dann:
    """dann.weight × binary cross-entropy of the domain head, reversal λ_p = 2/(1+exp(−γp))−1 (γ = dann.gamma)."""

    def renderings(self, key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
        return make_views(jax.random.fold_in(key, RENDERING_STREAM), tiles, num_views=1,
                          crop_size=config.data.crop_size, stain=StainAugConfig.from_config(config.lmc.stain))

    def head(self, config: ml_collections.ConfigDict) -> tuple[str, HeadFactory]:
        dims = tuple(config.dann.hidden_dims)
        return HEAD, lambda width, dtype, rngs: DomainHead(width, dims, dtype=dtype, rngs=rngs)

    def loss(self, model: nnx.Module, features: Features, progress: jax.Array,
             config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
        reversal = dann_schedule(progress, config.dann.gamma)
        loss, metrics = domain_terms(getattr(model, HEAD), features.view(0), features.rendering("dann"), reversal)
        return config.dann.weight * loss, metrics


TERM = Dann()
