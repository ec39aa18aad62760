"""DANN's term: a domain head, reached through gradient reversal, must not tell the tiles' domains apart.

Two adversaries (`config.dann.domain_field`): "" tells view 0 from a stain rendering drawn from its own key
stream (so the K views are the same with and without this term: the unsupervised reference); a batch field
("site": magnification, scanner or hospital, as the data set stores it) gives a K-way head over the domains of
every view. Knobs: `config.dann` (weight, gamma, hidden_dims, head_lr_scale (read by lmc_jax/optim.py),
domain_field, num_domains).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from lmc_jax.losses import (dann_schedule, domain_adversarial_loss, grad_reverse, masked_cross_entropy,
                            standardize_over_batch)
from lmc_jax.models.vit import DomainHead
from lmc_jax.objectives.base import Batch, Features, HeadFactory
from lmc_jax.optim import DOMAIN_HEAD
from lmc_jax.stain.augment import StainAugConfig, make_views

RENDERING_STREAM = 0x44414E4E
"""fold_in tag ("DANN") of the rendering's key: independent of the K views' keys (0 … K−1)."""
HEAD = DOMAIN_HEAD


def head_inputs(features: jax.Array) -> jax.Array:
    """Features [..., W] z-scored per dim over all leading axes (the global batch): what the domain head reads.

    A fresh probe reads z-scored features too; and the encoder cannot fool a head on raw features by inflating
    their scale along its weights (the domain loss then grows without bound: 124 at step 75 of the default
    job's dann reference before this, BENCHMARKS.md "DANN that aligns").
    """
    return standardize_over_batch(features.reshape(-1, features.shape[-1])).reshape(features.shape)


def domain_terms(head: nnx.Module, source: jax.Array, shifted: jax.Array,
                 reversal: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Domain loss of `head` telling source features [B, W] (label 0) from stain-shifted ones (label 1).

    The head sees grad_reverse(features, reversal) z-scored over the 2B rows: it descends the loss, the encoder
    ascends it × reversal.
    """
    features = head_inputs(jnp.stack([source, shifted]))  # [2, B, W]
    labels = jnp.broadcast_to(jnp.arange(2, dtype=jnp.float32)[:, None], features.shape[:2])
    logits = head(grad_reverse(features, reversal))
    loss = domain_adversarial_loss(logits, labels)
    accuracy = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))
    return loss, dict(dann_loss=loss, dann_lambda=jnp.asarray(reversal, jnp.float32), dann_accuracy=accuracy)


def _frozen(head: nnx.Module) -> nnx.Module:
    """`head` with its parameters behind stop_gradient: the encoder's loss through it trains only the encoder."""
    graphdef, state = nnx.split(head)
    return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def site_domain_terms(head: nnx.Module, views: jax.Array, domains: jax.Array, reversal: jax.Array,
                      adversary: str = "reversal") -> tuple[jax.Array, dict[str, jax.Array]]:
    """K-way domain loss on every view's features [K, B, W] (z-scored over the K·B rows, `head_inputs`) against
    each tile's domain [B] (−1 = none).

    adversary "reversal": the head sees grad_reverse(features, λ) and descends its cross-entropy, the encoder
    ascends it × λ (Ganin et al.). "confusion": the head descends its cross-entropy on detached features, the
    encoder descends λ × the cross-entropy of the (frozen) head's prediction against the uniform distribution
    (Tzeng et al. 2015), which takes the domain out of the features instead of flipping the head's answer.
    """
    labels = jnp.broadcast_to(domains, views.shape[:2])
    views = head_inputs(views)  # z-scored over the K·B rows
    if adversary == "reversal":
        logits = head(grad_reverse(views, reversal))  # [K, B, num_domains]
        loss, accuracy = masked_cross_entropy(logits, labels)
        objective = loss
    else:
        logits = head(jax.lax.stop_gradient(views))
        loss, accuracy = masked_cross_entropy(logits, labels)
        log_p = jax.nn.log_softmax(_frozen(head)(views), axis=-1)
        valid = (labels >= 0)[..., None]
        confusion = -jnp.sum(jnp.where(valid, log_p, 0.0)) / (log_p.shape[-1] * jnp.maximum(jnp.sum(valid), 1))
        objective = loss + reversal * confusion
    return objective, dict(dann_loss=loss, dann_lambda=jnp.asarray(reversal, jnp.float32), dann_accuracy=accuracy)


class Dann:
    """dann.weight × the domain head's cross-entropy, reversal λ_p = 2/(1+exp(−γp))−1 (γ = dann.gamma).

    `dann.domain_field` "": the head tells view 0 from a stain rendering (binary, the unsupervised reference);
    "site": it names each view's domain among `dann.num_domains` (the paper's magnification adversary).
    """

    def renderings(self, key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> jax.Array | None:
        if config.dann.domain_field:
            return None
        return make_views(jax.random.fold_in(key, RENDERING_STREAM), tiles, num_views=1,
                          crop_size=config.data.crop_size, stain=StainAugConfig.from_config(config.lmc.stain))

    def head(self, config: ml_collections.ConfigDict) -> tuple[str, HeadFactory]:
        dims = tuple(config.dann.hidden_dims)
        outputs = config.dann.num_domains if config.dann.domain_field else 1
        return HEAD, lambda width, dtype, rngs: DomainHead(width, dims, dtype=dtype, rngs=rngs, outputs=outputs)

    def loss(self, model: nnx.Module, features: Features, batch: Batch, progress: jax.Array,
             config: ml_collections.ConfigDict) -> tuple[jax.Array, dict[str, jax.Array]]:
        reversal = dann_schedule(progress, config.dann.gamma)
        head = getattr(model, HEAD)
        if config.dann.domain_field:
            loss, metrics = site_domain_terms(head, features.views, batch[config.dann.domain_field], reversal,
                                              config.dann.get("adversary", "reversal"))
        else:
            loss, metrics = domain_terms(head, features.view(0), features.rendering("dann"), reversal)
        return config.dann.weight * loss, metrics


TERM = Dann()
