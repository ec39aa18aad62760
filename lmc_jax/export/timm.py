"""Flax ViT params ⇄ timm `VisionTransformer` state dict, position-embedding resampling, config.json.

Pure numpy functions: no torch. Layouts: conv HWIO ⇄ OIHW, Linear kernel (in, out) ⇄ weight
(out, in), LayerNorm scale ⇄ weight; q/k/v are already fused as timm's `qkv`. Our ViT adds its
position embedding after prepending the class token (timm's default, `no_embed_class=False`).
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from lmc_jax.errors import UserError
from lmc_jax.models.vit import IMAGE_MEAN, IMAGE_STD, ViT, parse_variant

LAYER_NORM_EPS = 1e-6  # our ViT and timm's ViT both use this

# Our sizes that timm registers under their own name; any other size is built from a registered
# builder with every size argument passed in `model_args` (timm lets kwargs override the builder's).
TIMM_ARCHS = {
    "Ti/16": "vit_tiny_patch16_224",
    "S/8": "vit_small_patch8_224",
    "S/16": "vit_small_patch16_224",
    "S/32": "vit_small_patch32_224",
    "B/8": "vit_base_patch8_224",
    "B/16": "vit_base_patch16_224",
    "B/32": "vit_base_patch32_224",
    "L/16": "vit_large_patch16_224",
    "L/32": "vit_large_patch32_224",
}
GENERIC_ARCH = "vit_tiny_patch16_224"

# timm features our ViT does not have, recognised by key, for a message that names them.
_UNSUPPORTED = (
    (r"^reg_token$", "register tokens (timm reg_tokens > 0)"),
    (r"^dist_token$", "a distillation token (DeiT distilled)"),
    (r"^(mask_token|register_tokens)$", "the original DINOv2 layout (load it into timm once and save its state_dict)"),
    (r"^norm_pre\.", "a pre-norm before the blocks (timm pre_norm=True, CLIP style)"),
    (r"^fc_norm\.", "a LayerNorm after pooling (timm fc_norm=True); our mean pooling normalises before pooling"),
    (r"^attn_pool\.", "attention pooling (timm global_pool='map')"),
    (r"\.attn\.(q_norm|k_norm|norm)\.", "normalisation inside attention (timm qk_norm / scale_attn_norm)"),
    (r"\.mlp\.(norm|fc1_g|fc1_x|w12|w3)\.", "a gated or normalised MLP (SwiGLU / scale_mlp_norm)"),
    (r"\.attn\.(q_bias|v_bias|q_proj|k_proj|v_proj)", "split q/k/v projections (BEiT/EVA layout)"),
)
_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")


class TimmWeightsError(UserError):
    """Weights that do not fit the configured ViT; the message names the key, shapes and file."""


@dataclasses.dataclass(frozen=True)
class TimmSpec:
    """How to rebuild our ViT in timm: a registered architecture plus `create_model` kwargs."""

    architecture: str
    model_args: dict[str, Any]
    num_features: int
    global_pool: str


def timm_spec(variant: str, pool: str, image_size: int) -> TimmSpec:
    """The timm architecture and kwargs that give exactly our ViT of `variant`, `pool`, `image_size`."""
    size, patch = parse_variant(variant)
    args: dict[str, Any] = dict(
        img_size=image_size, patch_size=patch, embed_dim=size.width, depth=size.depth,
        num_heads=size.heads, mlp_ratio=size.mlp_dim / size.width,
    )
    if pool == "mean":  # norm before pooling, then average every token: no class token, no fc_norm
        args.update(class_token=False, global_pool="avg", fc_norm=False)
    elif pool != "cls":
        raise ValueError(f"model.pool={pool!r}: choose 'cls' or 'mean'")
    return TimmSpec(TIMM_ARCHS.get(variant, GENERIC_ARCH), args, size.width, "token" if pool == "cls" else "avg")


def hub_config(spec: TimmSpec, extra: Mapping[str, Any]) -> dict[str, Any]:
    """config.json in timm's Hugging Face layout (so `create_model('local-dir:DIR')` works), plus `extra`."""
    image_size = spec.model_args["img_size"]
    return dict(
        architecture=spec.architecture,
        num_classes=0,
        num_features=spec.num_features,
        global_pool=spec.global_pool,
        model_args=dict(spec.model_args),
        pretrained_cfg=dict(
            tag="lmc_jax", custom_load=False, input_size=[3, image_size, image_size], fixed_input_size=True,
            interpolation="bicubic", crop_pct=1.0, crop_mode="center", mean=list(IMAGE_MEAN),
            std=list(IMAGE_STD), num_classes=0, pool_size=None, first_conv="patch_embed.proj", classifier="head",
        ),
        **extra,
    )


def _rows(depth: int, has_cls: bool) -> list[tuple[tuple, str, str]]:
    """(our pure-dict path, timm key, layout) for every parameter of the encoder."""
    rows = [
        (("patch_embed", "kernel"), "patch_embed.proj.weight", "conv"),
        (("patch_embed", "bias"), "patch_embed.proj.bias", "same"),
        (("pos_embed",), "pos_embed", "same"),
        (("norm", "scale"), "norm.weight", "same"),
        (("norm", "bias"), "norm.bias", "same"),
    ]
    if has_cls:
        rows.append((("cls_token",), "cls_token", "same"))
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            rows.append((("blocks", i, norm, "scale"), f"blocks.{i}.{norm}.weight", "same"))
            rows.append((("blocks", i, norm, "bias"), f"blocks.{i}.{norm}.bias", "same"))
        for module, linear in (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2")):
            rows.append((("blocks", i, module, linear, "kernel"), f"blocks.{i}.{module}.{linear}.weight", "linear"))
            rows.append((("blocks", i, module, linear, "bias"), f"blocks.{i}.{module}.{linear}.bias", "same"))
    return rows


def _to_torch_layout(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return value.transpose(3, 2, 0, 1)  # HWIO → OIHW
    return value.T if layout == "linear" else value


def _to_flax_layout(value: np.ndarray, layout: str) -> np.ndarray:
    if layout == "conv":
        return value.transpose(2, 3, 1, 0)  # OIHW → HWIO
    return value.T if layout == "linear" else value


def to_timm(encoder_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Our encoder's pure param dict → timm state dict (float32, C-contiguous numpy)."""
    rows = _rows(len(encoder_params["blocks"]), "cls_token" in encoder_params)
    out = {}
    for path, key, layout in rows:
        value = encoder_params
        for part in path:
            value = value[part]
        out[key] = np.ascontiguousarray(_to_torch_layout(np.asarray(value, np.float32), layout))
    return out


def projector_to_torch(projector_params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Projector params → `projector.*` tensors in torch layout (Linear weight (out, in); BatchNorm weight/bias)."""
    out = {}
    for i, layer in sorted(projector_params["hidden"].items()):
        out[f"projector.hidden.{i}.weight"] = np.asarray(layer["kernel"], np.float32).T
    for i, norm in sorted(projector_params["norms"].items()):
        out[f"projector.norms.{i}.weight"] = np.asarray(norm["scale"], np.float32)
        out[f"projector.norms.{i}.bias"] = np.asarray(norm["bias"], np.float32)
    out["projector.out.weight"] = np.asarray(projector_params["out"]["kernel"], np.float32).T
    return {key: np.ascontiguousarray(value) for key, value in out.items()}


def _torch_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
    if layout == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return tuple(reversed(shape)) if layout == "linear" else tuple(shape)


def _expected_shapes(variant: str, pool: str, image_size: int) -> dict[str, tuple[int, ...]]:
    """timm key → shape of our ViT's parameter (read from the model itself), in torch layout."""
    abstract = nnx.eval_shape(lambda: ViT(variant, image_size, pool=pool, rngs=nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.split(abstract, nnx.Param)[1])
    shapes = {}
    for path, key, layout in _rows(len(params["blocks"]), pool == "cls"):
        value = params
        for part in path:
            value = value[part]
        shapes[key] = _torch_shape(tuple(value.shape), layout)
    return shapes


def describe(state_dict: Mapping[str, np.ndarray]) -> str:
    """What a timm ViT state dict holds (width, patch, depth, MLP width, class token), for messages."""
    parts = []
    if "patch_embed.proj.weight" in state_dict:
        shape = state_dict["patch_embed.proj.weight"].shape
        parts.append(f"width {shape[0]}, patch {shape[-1]}")
    depth = len({int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m})
    parts.append(f"{depth} blocks")
    if "blocks.0.mlp.fc1.weight" in state_dict:
        parts.append(f"MLP {state_dict['blocks.0.mlp.fc1.weight'].shape[0]}")
    parts.append("class token" if "cls_token" in state_dict else "no class token")
    return ", ".join(parts)


def resize_pos_embed(pos_embed: np.ndarray, num_prefix: int, grid: int) -> np.ndarray:
    """Resamples [1, prefix + g², D] to a grid×grid patch grid: bicubic with antialiasing, as timm does."""
    prefix, patches = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    old = math.isqrt(patches.shape[1])
    width = patches.shape[-1]
    image = patches.reshape(1, old, old, width)
    resized = jax.image.resize(image, (1, grid, grid, width), method="bicubic", antialias=True)
    return np.concatenate([prefix, np.asarray(resized, np.float32).reshape(1, grid * grid, width)], axis=1)


def _check_keys(sd: dict[str, np.ndarray], expected: dict[str, tuple[int, ...]], variant: str, source: str) -> None:
    """Refuses unsupported features, another depth or width, and any missing or unexpected key."""
    summary = f"{source} holds a ViT with {describe(sd)}; model.variant={variant!r}"
    unknown = sorted(set(sd) - set(expected))
    features = sorted({name for key in unknown for pattern, name in _UNSUPPORTED if re.search(pattern, key)})
    if features:
        raise TimmWeightsError(f"{summary}. The weights use {'; '.join(features)}, which lmc_jax's ViT does not "
                               f"support (keys {unknown[:4]}{' …' if len(unknown) > 4 else ''}).")
    depth = parse_variant(variant)[0].depth
    if len({int(m.group(1)) for m in map(_BLOCK.match, sd) if m}) != depth:
        raise TimmWeightsError(f"{summary} with {depth} blocks; set model.variant to the size of the weights.")
    for key, shape in expected.items():
        if key in sd and key != "pos_embed" and tuple(sd[key].shape) != shape:  # its grid may be resampled
            raise TimmWeightsError(f"{summary}. {key}: shape {tuple(sd[key].shape)} in the weights, but "
                                   f"model.variant={variant!r} needs {shape}; set model.variant to the size of "
                                   "the weights.")
    if unknown:
        raise TimmWeightsError(f"{summary}. Unexpected keys {unknown[:8]}{' …' if len(unknown) > 8 else ''}: "
                               "lmc_jax's ViT has no such parameters (not a plain timm VisionTransformer?).")
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise TimmWeightsError(f"{summary}. Missing keys {missing[:8]}{' …' if len(missing) > 8 else ''} "
                               "(timm qkv_bias=False or another non-standard layout?).")


def _pos_embed(pos: np.ndarray, has_cls: bool, grid: int, width: int, source: str, notes: list[str]) -> np.ndarray:
    """timm pos_embed → ours ([1, cls + grid², D]), covering the class token and resampled to `grid`."""
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != width:
        raise TimmWeightsError(f"{source}: pos_embed has shape {tuple(pos.shape)}, expected (1, tokens, {width}).")
    tokens = pos.shape[1]
    if has_cls and math.isqrt(tokens) ** 2 == tokens and tokens > 1:  # timm no_embed_class=True
        pos = np.concatenate([np.zeros((1, 1, width), np.float32), pos], axis=1)
        notes.append("pos_embed does not cover the class token (timm no_embed_class=True): the class token's "
                     "position row is set to zero, which is the same function")
    patches = pos.shape[1] - has_cls
    if math.isqrt(patches) ** 2 != patches:
        raise TimmWeightsError(f"{source}: pos_embed has {pos.shape[1]} positions, not {int(has_cls)} + a square "
                               "patch grid (register or extra tokens?); lmc_jax's ViT cannot use it.")
    if math.isqrt(patches) != grid:
        notes.append(f"pos_embed resampled from a {math.isqrt(patches)}² to a {grid}² patch grid (bicubic)")
        pos = resize_pos_embed(pos, int(has_cls), grid)
    return pos


def from_timm(
    state_dict: Mapping[str, Any], variant: str, pool: str, image_size: int, *, source: str = "the weights"
) -> tuple[dict[str, Any], list[str]]:
    """timm ViT state dict → our encoder's pure param dict (numpy float32), plus notes on what was adapted.

    Classification-head keys are dropped; layer scale (`ls1/ls2.gamma`) is folded into the
    preceding projection (exactly the same function); a smaller or larger position grid is
    resampled. Anything else that does not fit raises TimmWeightsError naming key and shapes.
    """
    size, patch = parse_variant(variant)
    if image_size % patch:
        raise TimmWeightsError(f"image size {image_size} is not a multiple of patch size {patch} of {variant!r}")
    sd = {key: np.asarray(value, np.float32) for key, value in state_dict.items()}
    notes: list[str] = []
    head = sorted(key for key in sd if key.startswith("head."))
    if head:
        notes.append(f"classification head dropped: {head}")
    gammas = {key: sd.pop(key) for key in [k for k in sd if _LAYER_SCALE.match(k)]}
    for key in head:
        del sd[key]
    has_cls = "cls_token" in sd
    if has_cls != (pool == "cls"):
        fix = "model.pool='cls'" if has_cls else "model.pool='mean' (timm class_token=False, global_pool='avg')"
        raise TimmWeightsError(f"{source} {'has' if has_cls else 'has no'} class token but model.pool={pool!r}; "
                               f"set {fix}.")
    _check_keys(sd, _expected_shapes(variant, pool, image_size), variant, source)
    sd["pos_embed"] = _pos_embed(sd["pos_embed"], has_cls, image_size // patch, size.width, source, notes)
    for key, gamma in gammas.items():
        block, which = _LAYER_SCALE.match(key).groups()
        if gamma.shape != (size.width,) or int(block) >= size.depth:
            raise TimmWeightsError(f"{source}: {key} has shape {gamma.shape}, expected ({size.width},) in one of "
                                   f"{size.depth} blocks.")
        linear = f"blocks.{block}.{'attn.proj' if which == '1' else 'mlp.fc2'}"
        sd[f"{linear}.weight"] = sd[f"{linear}.weight"] * gamma[:, None]
        sd[f"{linear}.bias"] = sd[f"{linear}.bias"] * gamma
    if gammas:
        notes.append(f"layer scale folded into attn.proj / mlp.fc2 of {len(gammas)} places")
    params: dict[str, Any] = {"blocks": {i: {} for i in range(size.depth)}}
    for path, key, layout in _rows(size.depth, has_cls):
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.ascontiguousarray(_to_flax_layout(sd[key], layout))
    return params, notes


def fold_input_normalization(params: Mapping[str, Any], mean: Any, std: Any) -> dict[str, Any]:
    """Encoder params that, on inputs normalised with our IMAGE_MEAN/IMAGE_STD, compute what `params` computed
    on inputs normalised with (mean, std), e.g. timm's augreg ViTs (0.5, 0.5).

    (x − m)/s = ((x − ours_m)/ours_s)·(ours_s/s) + (ours_m − m)/s is affine per channel and the patch
    embedding is a VALID convolution, so the change folds into its kernel and bias exactly.
    """
    mean, std = np.asarray(mean, np.float64).reshape(3), np.asarray(std, np.float64).reshape(3)
    if np.any(std <= 0) or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise TimmWeightsError(f"input normalisation mean={mean.tolist()} std={std.tolist()}: std must be > 0 and "
                               "both finite.")
    kernel = np.asarray(params["patch_embed"]["kernel"], np.float64)  # [p, p, 3, width]
    bias = np.asarray(params["patch_embed"]["bias"], np.float64)
    scale = np.asarray(IMAGE_STD) / std
    shift = (np.asarray(IMAGE_MEAN) - mean) / std
    patch_embed = {"kernel": (kernel * scale[None, None, :, None]).astype(np.float32),
                   "bias": (bias + np.einsum("ijcw,c->w", kernel, shift)).astype(np.float32)}
    return {**params, "patch_embed": patch_embed}
