"""The optimizer of a training run: AdamW with warm-up and cosine decay, weight decay on matrices only."""

from __future__ import annotations

import jax
import ml_collections
import optax


def _decay_mask(params: dict) -> dict:
    """Weight decay on matrices and conv kernels only (not biases, norms, tokens, position embeddings)."""
    def decide(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and name not in ("pos_embed", "cls_token")
    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up and cosine decay, optional global-norm clipping."""
    opt = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=config.num_steps,
        end_value=opt.learning_rate * 1e-2,
    )
    parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=_decay_mask))
    return optax.chain(*parts), schedule
