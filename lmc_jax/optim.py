"""The optimizer of a training run: AdamW with warm-up and cosine decay, weight decay on matrices only.

With `optimizer.freeze_encoder_steps = N` > 0 (fine-tuning an imported model, `init_from=`), the encoder is frozen
for the first N steps while the projector and heads train on its features, then trains with its own AdamW state
and its own warm-up, decaying to the same end as the rest.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from lmc_jax.errors import ConfigError

ENCODER = "encoder"  # the top-level params key freezing applies to
DOMAIN_HEAD = "domain_head"  # the top-level params key config.dann.head_lr_scale applies to (objectives/dann.py)


def _decay_mask(params: dict) -> dict:
    """Weight decay on matrices and conv kernels only (not biases, norms, tokens, position embeddings)."""
    def decide(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and name not in ("pos_embed", "cls_token", "reg_token")
    return jax.tree_util.tree_map_with_path(decide, params)


class FrozenState(NamedTuple):
    """Steps taken so far and the wrapped transformation's state."""

    count: jax.Array
    inner: Any


def _encoder_labels(params: dict) -> dict:
    """'encoder' for every leaf under params['encoder'], 'rest' for the projector and heads."""
    return {key: jax.tree.map(lambda _, k=key: ENCODER if k == ENCODER else "rest", value)
            for key, value in params.items()}


def zero_encoder_until(steps: int) -> optax.GradientTransformation:
    """Zeroes the encoder's gradients for the first `steps` updates, so clipping sees only what trains."""
    def init(params):
        del params
        return FrozenState(jnp.zeros((), jnp.int32), optax.EmptyState())

    def update(updates, state, params=None):
        del params
        keep = (state.count >= steps).astype(jnp.float32)
        updates = {key: jax.tree.map(lambda g: g * keep.astype(g.dtype), value) if key == ENCODER else value
                   for key, value in updates.items()}
        return updates, FrozenState(state.count + 1, state.inner)

    return optax.GradientTransformation(init, update)


def hold_until(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
    """`inner`, with zero updates and its state untouched for the first `steps` updates (so its moments, step
    count and schedule start when it starts)."""
    def init(params):
        return FrozenState(jnp.zeros((), jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        new_updates, new_inner = inner.update(updates, state.inner, params)
        frozen = state.count < steps
        new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
        new_inner = jax.tree.map(lambda old, new: jnp.where(frozen, old, new), state.inner, new_inner)
        return new_updates, FrozenState(state.count + 1, new_inner)

    return optax.GradientTransformation(init, update)


def _schedule(opt: ml_collections.ConfigDict, decay_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak learning rate, then cosine decay to 1% of it at `decay_steps`."""
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=decay_steps,
        end_value=opt.learning_rate * 1e-2,
    )


def _with_head_lr(adamw, factor: float):
    """`adamw` whose updates of the DANN domain head (DOMAIN_HEAD) are × `factor`: its learning rate alone scaled."""
    mask = lambda params: {name: jax.tree.map(lambda _: name == DOMAIN_HEAD, tree)  # noqa: E731
                           for name, tree in params.items()}
    return lambda learning_rate: optax.chain(adamw(learning_rate), optax.masked(optax.scale(factor), mask))


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up and cosine decay, optional global-norm clipping, optional encoder freezing."""
    opt = config.optimizer
    schedule = _schedule(opt, config.num_steps)
    parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []

    def adamw(learning_rate: optax.Schedule) -> optax.GradientTransformation:
        """The configured AdamW on `learning_rate`, weight decay on matrices only."""
        return optax.adamw(learning_rate, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=_decay_mask)

    head_lr = float(config.get("dann", {}).get("head_lr_scale", 1.0))
    if head_lr != 1.0:  # after AdamW: its update is invariant to the gradient's scale, so the head's lr is scaled
        adamw = _with_head_lr(adamw, head_lr)
    frozen = int(opt.get("freeze_encoder_steps", 0))
    if frozen <= 0:
        parts.append(adamw(schedule))
        return optax.chain(*parts), schedule
    if frozen >= config.num_steps:
        raise ConfigError(f"config.optimizer.freeze_encoder_steps={frozen}: must be below num_steps="
                         f"{config.num_steps}, or the encoder never trains (evaluate the imported model instead).")
    encoder = hold_until(adamw(_schedule(opt, config.num_steps - frozen)), frozen)
    tx = optax.multi_transform({ENCODER: encoder, "rest": adamw(schedule)}, _encoder_labels)
    return optax.chain(zero_encoder_until(frozen), *parts, tx), schedule


@functools.lru_cache(maxsize=None)
def warmup_cosine_adamw(learning_rate: float, weight_decay: float, num_steps: int) -> optax.GradientTransformation:
    """AdamW with a 10% linear warm-up then cosine decay over `num_steps`, for the short head trainings (detection,
    fine-tuning); one object per setting, so the jitted steps that close over it stay cached."""
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, max(num_steps // 10, 1), max(num_steps, 2))
    return optax.adamw(schedule, weight_decay=weight_decay)
