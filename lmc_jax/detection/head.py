"""The detection head and the encoder's patch tokens as a grid.

The head reads the encoder's final (LayerNorm-ed) patch tokens laid out on their grid [B, g, g, width]:
LayerNorm → 3×3 conv (hidden, GELU) → 1×1 conv to one logit per patch, then bilinear upsampling by
`upsample` (patch / heat-map stride) so the heat map has one cell per `stride` pixels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lmc_jax.models.vit import ViT


def patch_grid(encoder: ViT, images: jax.Array) -> jax.Array:
    """Images float [B, S, S, 3] in [0, 1] → patch tokens [B, S/patch, S/patch, width] (float32), class token
    dropped; through the encoder's own `tokens` (no change to the model)."""
    tokens = encoder.tokens(images)
    if encoder.pool == "cls":
        tokens = tokens[:, 1:]
    side = images.shape[1] // encoder.patch
    return tokens.reshape(tokens.shape[0], side, side, tokens.shape[-1]).astype(jnp.float32)


class DetectionHead(nnx.Module):
    """Patch-token grid [B, g, g, width] → heat-map logits [B, g·upsample, g·upsample] (float32)."""

    def __init__(self, width: int, hidden: int, upsample: int, *, prior: float = 0.01, rngs: nnx.Rngs):
        if upsample < 1:
            raise ValueError(f"upsample must be ≥ 1, got {upsample}")
        self.upsample = upsample
        self.norm = nnx.LayerNorm(width, epsilon=1e-6, rngs=rngs)
        self.conv = nnx.Conv(width, hidden, (3, 3), padding="SAME", rngs=rngs)
        # the output bias starts at the prior's logit (RetinaNet's trick): early losses are not swamped by background
        self.out = nnx.Conv(hidden, 1, (1, 1), bias_init=nnx.initializers.constant(-math.log((1 - prior) / prior)),
                            rngs=rngs)

    def __call__(self, grid: jax.Array) -> jax.Array:
        x = self.out(jax.nn.gelu(self.conv(self.norm(grid)), approximate=False))[..., 0]
        if self.upsample > 1:
            b, h, w = x.shape
            x = jax.image.resize(x, (b, h * self.upsample, w * self.upsample), "bilinear")
        return x.astype(jnp.float32)
