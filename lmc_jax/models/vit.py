"""Vision Transformer encoder, Barlow-Twins projector and DANN domain head in Flax NNX.

Laid out the timm way (class token prepended before the position embedding is added, fused
qkv, exact GELU, LayerNorm eps 1e-6) so that weights map one-to-one onto timm's
`VisionTransformer`. Parameters are float32; `dtype` sets the compute dtype.

The options today's pathology foundation models need are all off by default: register tokens
(timm `reg_tokens`), a position embedding that skips the prefix tokens (`no_embed_class`), SwiGLU
MLPs (timm `SwiGLU` / `SwiGLUPacked` with SiLU), any `mlp_ratio`, layer scale (`init_values`), the
input normalisation the weights were trained with, and the embedding conventions of POOLS.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

# ImageNet statistics, as timm's ViTs expect; applied inside the model so callers feed [0, 1].
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)

# Embedding conventions on the final-LayerNorm tokens [class?, registers…, patches…]: the class token; the mean
# of the patch tokens without a class token (our original "mean"); the mean of the patch tokens of a model that
# has a class token; the class token and that mean concatenated (Virchow2, H0-mini), 2 × width wide.
POOLS = ("cls", "mean", "patch_mean", "cls_patch_mean")
# "gelu": timm's Mlp; "swiglu": timm SwiGLU (hidden = int(width·mlp_ratio) per branch); "swiglu_packed": timm
# SwiGLUPacked (fc1 of int(width·mlp_ratio) outputs, its first half the SiLU gate). Both SwiGLUs are held packed.
MLPS = ("gelu", "swiglu", "swiglu_packed")


@dataclasses.dataclass(frozen=True)
class ViTSize:
    """Width, depth, heads and MLP width of one named ViT size."""

    width: int
    depth: int
    heads: int
    mlp_dim: int


# "mu" is a test size; "Mi" a CPU-sized encoder for the embedded default; the rest are the
# standard sizes of Dosovitskiy et al. / timm.
SIZES: dict[str, ViTSize] = {
    "mu": ViTSize(32, 2, 2, 64),
    "Mi": ViTSize(128, 4, 4, 512),
    "Ti": ViTSize(192, 12, 3, 768),
    "S": ViTSize(384, 12, 6, 1536),
    "B": ViTSize(768, 12, 12, 3072),
    "L": ViTSize(1024, 24, 16, 4096),
    "H": ViTSize(1280, 32, 16, 5120),  # timm vit_huge_patch14_224 (Virchow2's trunk)
    "g": ViTSize(1536, 40, 24, 6144),  # DINOv2's ViT-g (timm vit_giant_patch14_dinov2: H-optimus, Prov-GigaPath)
}


def parse_variant(variant: str) -> tuple[ViTSize, int]:
    """`"S/16"` → (size of S, patch 16); `"1536x24x24/14"` → width × depth × heads (MLP 4 × width), patch 14.

    The second form names sizes no table has (UNI2-h is 1536 wide, 24 deep, 24 heads); an unknown name raises.
    """
    custom = re.fullmatch(r"(\d+)x(\d+)x(\d+)/(\d+)", variant)
    if custom:
        width, depth, heads, patch = map(int, custom.groups())
        if min(width, depth, heads, patch) > 0:
            return ViTSize(width, depth, heads, 4 * width), patch
    match = re.fullmatch(r"(\w+)/(\d+)", variant)
    if not match or match.group(1) not in SIZES:
        raise ValueError(
            f"model.variant={variant!r} is not '<size>/<patch>' with size in {sorted(SIZES)} "
            "(for example 'S/16') nor '<width>x<depth>x<heads>/<patch>' (for example '1536x24x24/14')."
        )
    return SIZES[match.group(1)], int(match.group(2))


def mlp_hidden(size: ViTSize, mlp: str, mlp_ratio: float) -> int:
    """Width of the MLP's hidden (gated) activations: timm's int(width · mlp_ratio), halved for SwiGLUPacked;
    mlp_ratio 0 takes the size's own MLP width."""
    if mlp not in MLPS:
        raise ValueError(f"model.mlp={mlp!r}: choose one of {MLPS}")
    total = int(size.width * mlp_ratio) if mlp_ratio else size.mlp_dim
    if mlp == "swiglu_packed":
        if total % 2:
            raise ValueError(f"model.mlp_ratio={mlp_ratio}: SwiGLUPacked needs an even int(width · mlp_ratio), "
                             f"got {total}")
        return total // 2
    return total


def arch_kwargs(model_config) -> dict:
    """The architecture options of `config.model` as ViT keyword arguments; configs written before they existed
    give the defaults (the plain timm ViT with ImageNet normalisation)."""
    get = model_config.get
    return dict(
        reg_tokens=int(get("reg_tokens", 0)), mlp=get("mlp", "gelu"), mlp_ratio=float(get("mlp_ratio", 0.0)),
        init_values=float(get("init_values", 0.0)), no_embed_class=bool(get("no_embed_class", False)),
        image_mean=tuple(get("image_mean", None) or IMAGE_MEAN), image_std=tuple(get("image_std", None) or IMAGE_STD),
    )


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (timm's layout)."""

    def __init__(self, width: int, heads: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nnx.Linear(width, 3 * width, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(width, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """The qkv and output projections contract straight into and out of a heads-major [3, B, H, T, d]
        layout (timm's weights, reshaped): no transposes around the attention products, which made XLA:CPU's
        ViT-S/16 training step ~20% slower (benchmarks/train_step.py)."""
        width = x.shape[-1]
        heads, head_dim = self.heads, width // self.heads
        kernel = self.qkv.kernel[...].astype(x.dtype).reshape(width, 3, heads, head_dim)
        bias = self.qkv.bias[...].astype(x.dtype).reshape(3, 1, heads, 1, head_dim)
        q, k, v = jnp.einsum("btw,wchd->cbhtd", x, kernel) + bias
        logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(head_dim**-0.5, x.dtype), k)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(x.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
        proj = self.proj.kernel[...].astype(x.dtype).reshape(heads, head_dim, width)
        return jnp.einsum("bhtd,hdw->btw", out, proj) + self.proj.bias[...].astype(x.dtype)


class Mlp(nnx.Module):
    """Two-layer MLP with exact GELU, as timm's ViT block."""

    def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class GluMlp(nnx.Module):
    """SwiGLU held packed, as timm's SwiGLUPacked: fc1 → [gate | value], SiLU(gate) · value, fc2."""

    def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, 2 * hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """timm GluMlp(gate_last=False): the first half of fc1's outputs is the gate."""
        gate, value = jnp.split(self.fc1(x), 2, axis=-1)
        return self.fc2(jax.nn.silu(gate) * value)


class LayerScale(nnx.Module):
    """Per-channel scale of a residual branch (timm `init_values`, CaiT/DINOv2 layer scale)."""

    def __init__(self, width: int, init_values: float):
        self.gamma = nnx.Param(jnp.full((width,), init_values, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return x * self.gamma[...].astype(x.dtype)


class Block(nnx.Module):
    """Pre-norm transformer block, with layer scale on both branches when `init_values` > 0."""

    def __init__(self, size: ViTSize, *, mlp: str = "gelu", hidden: int = 0, init_values: float = 0.0,
                 dtype: jnp.dtype, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(size.width, epsilon=1e-6, dtype=dtype, rngs=rngs)
        self.attn = Attention(size.width, size.heads, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(size.width, epsilon=1e-6, dtype=dtype, rngs=rngs)
        mlp_class = Mlp if mlp == "gelu" else GluMlp
        self.mlp = mlp_class(size.width, hidden or size.mlp_dim, dtype=dtype, rngs=rngs)
        self.layer_scale = init_values > 0
        if self.layer_scale:
            self.ls1 = LayerScale(size.width, init_values)
            self.ls2 = LayerScale(size.width, init_values)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.layer_scale:
            x = x + self.ls1(self.attn(self.norm1(x)))
            return x + self.ls2(self.mlp(self.norm2(x)))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nnx.Module):
    """ViT encoder: images float [B, H, W, 3] in [0, 1] → pooled embedding [B, num_features] (float32)."""

    def __init__(
        self,
        variant: str,
        image_size: int,
        *,
        pool: str = "cls",
        reg_tokens: int = 0,
        mlp: str = "gelu",
        mlp_ratio: float = 0.0,
        init_values: float = 0.0,
        no_embed_class: bool = False,
        image_mean: tuple[float, ...] = IMAGE_MEAN,
        image_std: tuple[float, ...] = IMAGE_STD,
        dtype: jnp.dtype = jnp.float32,
        remat: bool = False,
        rngs: nnx.Rngs,
    ):
        size, patch = parse_variant(variant)
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of patch size {patch}")
        if pool not in POOLS:
            raise ValueError(f"model.pool={pool!r}: choose one of {POOLS}")
        if reg_tokens < 0:
            raise ValueError(f"model.reg_tokens={reg_tokens}: must be ≥ 0")
        if len(image_mean) != 3 or len(image_std) != 3 or min(image_std) <= 0:
            raise ValueError(f"model.image_mean={image_mean} / model.image_std={image_std}: three values each, "
                             "std > 0")
        hidden = mlp_hidden(size, mlp, mlp_ratio)
        self.size, self.patch, self.image_size, self.pool = size, patch, image_size, pool
        self.dtype, self.remat = dtype, remat
        self.reg_tokens, self.no_embed_class = reg_tokens, no_embed_class
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        self.num_prefix_tokens = (pool != "mean") + reg_tokens
        num_tokens = (image_size // patch) ** 2 + (0 if no_embed_class else self.num_prefix_tokens)
        self.patch_embed = nnx.Conv(
            3, size.width, (patch, patch), strides=patch, padding="VALID", dtype=dtype, rngs=rngs
        )
        init = nnx.initializers.normal(0.02)
        if pool != "mean":
            self.cls_token = nnx.Param(jnp.zeros((1, 1, size.width)))
        if reg_tokens:
            self.reg_token = nnx.Param(nnx.initializers.normal(1e-6)(rngs.params(), (1, reg_tokens, size.width)))
        self.pos_embed = nnx.Param(init(rngs.params(), (1, num_tokens, size.width)))
        self.blocks = nnx.List([Block(size, mlp=mlp, hidden=hidden, init_values=init_values, dtype=dtype, rngs=rngs)
                                for _ in range(size.depth)])
        self.norm = nnx.LayerNorm(size.width, epsilon=1e-6, dtype=dtype, rngs=rngs)

    @property
    def width(self) -> int:
        """Width of the tokens."""
        return self.size.width

    @property
    def num_features(self) -> int:
        """Width of the pooled embedding: twice the token width for "cls_patch_mean"."""
        return 2 * self.size.width if self.pool == "cls_patch_mean" else self.size.width

    def tokens(self, images: jax.Array) -> jax.Array:
        """Normalised images → token sequence after the final LayerNorm, [B, prefix + patches, width]."""
        mean, std = jnp.asarray(self.image_mean), jnp.asarray(self.image_std)
        x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)
        x = self.patch_embed(x)
        x = x.reshape(x.shape[0], -1, x.shape[-1])
        prefix = []
        if self.pool != "mean":
            prefix.append(jnp.broadcast_to(self.cls_token[...], (x.shape[0], 1, x.shape[-1])).astype(x.dtype))
        if self.reg_tokens:
            prefix.append(jnp.broadcast_to(self.reg_token[...], (x.shape[0], self.reg_tokens, x.shape[-1]))
                          .astype(x.dtype))
        if self.no_embed_class:  # timm no_embed_class=True: positions cover the patches only
            x = jnp.concatenate([*prefix, x + self.pos_embed[...].astype(x.dtype)], axis=1)
        else:
            x = jnp.concatenate([*prefix, x], axis=1) if prefix else x
            x = x + self.pos_embed[...].astype(x.dtype)
        for block in self.blocks:
            x = nnx.remat(lambda blk, h: blk(h))(block, x) if self.remat else block(x)
        return self.norm(x)

    def pool_tokens(self, x: jax.Array) -> jax.Array:
        """Final-LayerNorm tokens → the embedding of `self.pool` (register tokens never enter a mean)."""
        if self.pool == "cls":
            return x[:, 0]
        patches = x[:, self.num_prefix_tokens:] if self.num_prefix_tokens else x
        if self.pool == "cls_patch_mean":
            return jnp.concatenate([x[:, 0], patches.mean(axis=1)], axis=-1)
        return patches.mean(axis=1)

    def __call__(self, images: jax.Array) -> jax.Array:
        return self.pool_tokens(self.tokens(images)).astype(jnp.float32)


class BatchNorm(nnx.Module):
    """Batch normalisation over axis -2 with batch statistics only (no running averages).

    The projector is used only in training, so running statistics are never needed; under
    `jit` with the batch sharded, the mean is over the GLOBAL batch.
    """

    def __init__(self, features: int, *, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((features,)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=-2, keepdims=True)
        var = x32.var(axis=-2, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(x.dtype)


class Projector(nnx.Module):
    """Barlow-Twins projector: (Linear-BN-ReLU) × (n-1), then a plain Linear.

    Input [..., B, D]; batch statistics are taken over axis -2, so stacking K views as
    [K, B, D] normalises each view separately, as Barlow Twins does.
    """

    def __init__(self, in_features: int, dims: tuple[int, ...], *, dtype: jnp.dtype, rngs: nnx.Rngs):
        if not dims:
            raise ValueError("model.projector_dims must list at least one width")
        widths = (in_features, *dims)
        self.hidden = nnx.List(
            [nnx.Linear(a, b, use_bias=False, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-2], widths[1:-1])]
        )
        self.norms = nnx.List([BatchNorm(b) for b in widths[1:-1]])
        self.out = nnx.Linear(widths[-2], widths[-1], use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for linear, norm in zip(self.hidden, self.norms):
            x = jax.nn.relu(norm(linear(x)))
        return self.out(x).astype(jnp.float32)


class DomainHead(nnx.Module):
    """Classifier head: MLP width → hidden dims (ReLU) → `outputs` logits. DANN's domain head (1 logit: source 0 /
    stain-shifted 1, or one per domain) and, linear (no hidden dims), the supervised term's classifier."""

    def __init__(self, in_features: int, hidden_dims: tuple[int, ...], *, dtype: jnp.dtype, rngs: nnx.Rngs,
                 outputs: int = 1):
        widths = (in_features, *hidden_dims)
        self.hidden = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
        self.out = nnx.Linear(widths[-1], outputs, dtype=dtype, rngs=rngs)
        self.outputs = outputs

    def __call__(self, x: jax.Array) -> jax.Array:
        """Features [..., width] → logits [...] with one output, else [..., outputs] (float32)."""
        for linear in self.hidden:
            x = jax.nn.relu(linear(x))
        logits = self.out(x).astype(jnp.float32)
        return logits[..., 0] if self.outputs == 1 else logits


class LMCModel(nnx.Module):
    """Encoder + projector (+ the heads the objective's terms train): what training updates; embedding keeps
    `encoder` only."""

    def __init__(self, encoder: ViT, projector: Projector, heads: Mapping[str, nnx.Module] | None = None):
        self.encoder = encoder
        self.projector = projector
        for name, head in (heads or {}).items():  # absent without such a term: LMC's checkpoints stay as they were
            setattr(self, name, head)

    def embed(self, views: jax.Array) -> jax.Array:
        """Views [K, B, H, W, 3] → encoder features [K, B, width], all views in one encoder pass."""
        k, b = views.shape[:2]
        return self.encoder(views.reshape(k * b, *views.shape[2:])).reshape(k, b, -1)

    def __call__(self, views: jax.Array) -> jax.Array:
        """Views [K, B, H, W, 3] → projections [K, B, P]."""
        return self.projector(self.embed(views))


HeadFactory = Callable[[int, jnp.dtype, nnx.Rngs], nnx.Module]


def build_model(
    model_config, image_size: int, *, seed: int, heads: Mapping[str, HeadFactory] | None = None
) -> LMCModel:
    """Encoder + projector from `config.model`, then each head `heads` names (factory(width, dtype, rngs)).

    Heads are created after the projector, so encoder and projector start from the same weights either way.
    """
    rngs = nnx.Rngs(params=seed)
    dtype = jnp.dtype(model_config.dtype)
    encoder = ViT(
        model_config.variant,
        image_size,
        pool=model_config.pool,
        dtype=dtype,
        remat=model_config.get("remat", False),
        rngs=rngs,
        **arch_kwargs(model_config),
    )
    features = encoder.num_features
    projector = Projector(features, tuple(model_config.projector_dims), dtype=dtype, rngs=rngs)
    return LMCModel(encoder, projector, {name: make(features, dtype, rngs) for name, make in (heads or {}).items()})
