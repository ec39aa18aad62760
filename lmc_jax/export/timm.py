"""Flax ViT params ⇄ timm `VisionTransformer` state dict, position-embedding resampling, config.json.

Pure numpy functions: no torch. Layouts: conv HWIO ⇄ OIHW, Linear kernel (in, out) ⇄ weight
(out, in), LayerNorm scale ⇄ weight; q/k/v are already fused as timm's `qkv`. Our ViT adds its
position embedding after prepending the class token (timm's default, `no_embed_class=False`) unless
`model.no_embed_class`; register tokens, layer scale and SwiGLU (held packed) map key for key.
FOUNDATION_MODELS lists the published timm arguments of the pathology foundation models and our config.
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
from lmc_jax.models.vit import IMAGE_MEAN, IMAGE_STD, ViT, mlp_hidden, parse_variant

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
# A registered builder whose defaults are mlp_layer=SwiGLUPacked, act_layer=SiLU: a config.json cannot name a
# class, so an export with a SwiGLU MLP goes through it (every size argument is passed explicitly).
SWIGLU_ARCH = "vit_giant_patch14_dinov2"
# Attention heads of the registered builders config.json files name (heads cannot be read from weights).
TIMM_ARCH_HEADS = {
    **{name: parse_variant(variant)[0].heads for variant, name in TIMM_ARCHS.items()},
    "vit_huge_patch14_224": 16, "vit_giant_patch14_224": 16, "vit_large_patch14_dinov2": 16,
    "vit_giant_patch14_dinov2": 24, "vit_base_patch14_reg4_dinov2": 12, "vit_large_patch14_reg4_dinov2": 16,
    "vit_giant_patch14_reg4_dinov2": 24,
}
_GLOBAL_POOL = {"cls": "token", "mean": "avg", "patch_mean": "avg", "cls_patch_mean": ""}

# timm features our ViT does not have, recognised by key, for a message that names them.
_UNSUPPORTED = (
    (r"^dist_token$", "a distillation token (DeiT distilled)"),
    (r"^(mask_token|register_tokens)$", "the original DINOv2 layout (load it into timm once and save its state_dict)"),
    (r"^norm_pre\.", "a pre-norm before the blocks (timm pre_norm=True, CLIP style)"),
    (r"^fc_norm\.", "a LayerNorm after pooling (timm fc_norm=True); our mean pooling normalises before pooling"),
    (r"^attn_pool\.", "attention pooling (timm global_pool='map')"),
    (r"\.attn\.(q_norm|k_norm|norm)\.", "normalisation inside attention (timm qk_norm / scale_attn_norm)"),
    (r"\.mlp\.(norm|w12|w3)\.", "a normalised MLP (timm scale_mlp_norm) or DINOv2's own SwiGLUFFN layout (w12/w3)"),
    (r"\.attn\.(q_bias|v_bias|q_proj|k_proj|v_proj)", "split q/k/v projections (BEiT/EVA layout)"),
    (r"^(embeddings\.|encoder\.layer\.)", "the Hugging Face transformers layout (ViTModel / Dinov2Model, e.g. "
     "Phikon-v2): convert it to a timm state dict first"),
)
_LAYER_SCALE = re.compile(r"^blocks\.(\d+)\.ls([12])\.gamma$")
_SPLIT_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp)\.fc1_g\.(weight|bias)$")
_BLOCK = re.compile(r"^blocks\.(\d+)\.")
ARCH_KEYS = ("reg_tokens", "mlp", "mlp_ratio", "init_values", "no_embed_class")  # ViT options weights depend on


HOPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)  # H-optimus-0/1 and H0-mini (their pretrained_cfg / model cards)
HOPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@dataclasses.dataclass(frozen=True)
class FoundationModel:
    """A published pathology foundation model: its hub id, the timm builder and arguments its authors publish
    (classes named as strings), our `config.model` keys that build the same network, and its embedding."""

    hub: str
    timm_name: str
    timm_args: dict[str, Any]
    model: dict[str, Any]
    embedding: str


_SWIGLU = {"mlp_layer": "timm.layers.SwiGLUPacked", "act_layer": "torch.nn.SiLU"}
# Read through the code search (model cards and the loaders that copy them), not guessed:
#
# | model | timm name and published args | our config.model | embedding |
# | --- | --- | --- | --- |
# | UNI (MahmoodLab/UNI) | vit_large_patch16_224, img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True | L/16, init_values 1e-5 | class token |
# | UNI2-h (MahmoodLab/UNI2-h) | vit_giant_patch14_224, img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536, mlp_ratio=2.66667*2, num_classes=0, no_embed_class=True, mlp_layer=SwiGLUPacked, act_layer=SiLU, reg_tokens=8, dynamic_img_size=True | 1536x24x24/14, 8 registers, no_embed_class, swiglu_packed 5.33334, init_values 1e-5 | class token |
# | Virchow2 (paige-ai/Virchow2) | vit_huge_patch14_224, config.json model_args img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool='', dynamic_img_size=True; create_model(mlp_layer=SwiGLUPacked, act_layer=SiLU) | H/14, 4 registers (positions cover them), swiglu_packed 5.3375, init_values 1e-5 | class token ⊕ mean of the 256 patch tokens (output[:, 5:]), 2560 |
# | H-optimus-0 / -1 (bioptimus/H-optimus-0, -1) | vit_giant_patch14_reg4_dinov2, create_model(init_values=1e-5, dynamic_img_size=False); released params patch_size=14, embed_dim=1536, depth=40, num_heads=24, init_values=1e-05, mlp_ratio=5.33334, mlp_layer=GluMlp(SiLU, gate_last=False), act_layer=SiLU, reg_tokens=4, no_embed_class=True, img_size=224 | g/14, 4 registers, no_embed_class, swiglu_packed 5.33334, init_values 1e-5, H-optimus mean/std | class token |
# | H0-mini (bioptimus/H0-mini) | hub config (ViT-B/14, 4 registers; model(x) gives all tokens, (1, 261, 768): global_pool=""), create_model(mlp_layer=SwiGLUPacked, act_layer=SiLU); mlp_ratio not published in what we read: vit_base_patch14_reg4_dinov2's default 4 is assumed and checked against the weights' shapes | B/14, 4 registers, no_embed_class, swiglu_packed 4, init_values 1e-5, H-optimus mean/std | class token ⊕ mean of patch tokens (output[:, num_prefix_tokens:]), 1536 |
# | Prov-GigaPath (prov-gigapath/prov-gigapath) | vit_giant_patch14_dinov2 (its SwiGLUPacked + SiLU), config.json model_args img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-05, mlp_ratio=5.33334, num_classes=0; global_pool='token' | g/16, swiglu_packed 5.33334, init_values 1e-5 | class token |
# | Phikon-v2 (owkin/phikon-v2) | not timm: a Hugging Face transformers Dinov2Model (AutoModel.from_pretrained, last_hidden_state[:, 0]); its keys (embeddings.*, encoder.layer.*) are refused by name: convert to a timm state dict first | — | class token |
FOUNDATION_MODELS: dict[str, FoundationModel] = {
    "uni": FoundationModel(
        "MahmoodLab/UNI", "vit_large_patch16_224",
        dict(img_size=224, patch_size=16, init_values=1e-5, num_classes=0, dynamic_img_size=True),
        dict(variant="L/16", pool="cls", init_values=1e-5), "cls"),
    "uni2-h": FoundationModel(
        "MahmoodLab/UNI2-h", "vit_giant_patch14_224",
        dict(img_size=224, patch_size=14, depth=24, num_heads=24, init_values=1e-5, embed_dim=1536,
             mlp_ratio=2.66667 * 2, num_classes=0, no_embed_class=True, reg_tokens=8, dynamic_img_size=True,
             **_SWIGLU),
        dict(variant="1536x24x24/14", pool="cls", reg_tokens=8, no_embed_class=True, mlp="swiglu_packed",
             mlp_ratio=2.66667 * 2, init_values=1e-5), "cls"),
    "virchow2": FoundationModel(
        "paige-ai/Virchow2", "vit_huge_patch14_224",
        dict(img_size=224, init_values=1e-5, num_classes=0, reg_tokens=4, mlp_ratio=5.3375, global_pool="",
             dynamic_img_size=True, **_SWIGLU),
        dict(variant="H/14", pool="cls_patch_mean", reg_tokens=4, mlp="swiglu_packed", mlp_ratio=5.3375,
             init_values=1e-5), "cls_patch_mean"),
    "h-optimus-0": FoundationModel(
        "bioptimus/H-optimus-0", "vit_giant_patch14_reg4_dinov2",
        dict(img_size=224, init_values=1e-5, dynamic_img_size=False, num_classes=0),
        dict(variant="g/14", pool="cls", reg_tokens=4, no_embed_class=True, mlp="swiglu_packed", mlp_ratio=5.33334,
             init_values=1e-5, image_mean=HOPTIMUS_MEAN, image_std=HOPTIMUS_STD), "cls"),
    "h-optimus-1": FoundationModel(
        "bioptimus/H-optimus-1", "vit_giant_patch14_reg4_dinov2",
        dict(img_size=224, init_values=1e-5, dynamic_img_size=False, num_classes=0),
        dict(variant="g/14", pool="cls", reg_tokens=4, no_embed_class=True, mlp="swiglu_packed", mlp_ratio=5.33334,
             init_values=1e-5, image_mean=HOPTIMUS_MEAN, image_std=HOPTIMUS_STD), "cls"),
    "h0-mini": FoundationModel(
        "bioptimus/H0-mini", "vit_base_patch14_reg4_dinov2",
        dict(img_size=224, num_classes=0, global_pool="", **_SWIGLU),
        dict(variant="B/14", pool="cls_patch_mean", reg_tokens=4, no_embed_class=True, mlp="swiglu_packed",
             mlp_ratio=4.0, init_values=1e-5, image_mean=HOPTIMUS_MEAN, image_std=HOPTIMUS_STD), "cls_patch_mean"),
    "prov-gigapath": FoundationModel(
        "prov-gigapath/prov-gigapath", "vit_giant_patch14_dinov2",
        dict(img_size=224, in_chans=3, patch_size=16, embed_dim=1536, depth=40, num_heads=24, init_values=1e-05,
             mlp_ratio=5.33334, num_classes=0),
        dict(variant="g/16", pool="cls", mlp="swiglu_packed", mlp_ratio=5.33334, init_values=1e-5), "cls"),
}


class TimmWeightsError(UserError):
    """Weights that do not fit the configured ViT; the message names the key, shapes and file."""


@dataclasses.dataclass(frozen=True)
class TimmSpec:
    """How to rebuild our ViT in timm: a registered architecture plus `create_model` kwargs, its input
    normalisation and our embedding convention (`pool`) on timm's output."""

    architecture: str
    model_args: dict[str, Any]
    num_features: int
    global_pool: str
    mean: tuple[float, ...] = IMAGE_MEAN
    std: tuple[float, ...] = IMAGE_STD
    pool: str = "cls"


def timm_mlp_ratio(width: int, hidden: int) -> float:
    """An mlp_ratio for which timm's int(width · mlp_ratio) is exactly `hidden` (hidden/width can round down)."""
    ratio = hidden / width
    return ratio if int(width * ratio) == hidden else (hidden + 0.5) / width


def timm_spec(variant: str, pool: str, image_size: int, *, reg_tokens: int = 0, mlp: str = "gelu",
              mlp_ratio: float = 0.0, init_values: float = 0.0, no_embed_class: bool = False,
              image_mean: tuple[float, ...] = IMAGE_MEAN, image_std: tuple[float, ...] = IMAGE_STD) -> TimmSpec:
    """The timm architecture and kwargs that give exactly our ViT of `variant`, `pool`, `image_size` and options.

    Both SwiGLUs export as timm SwiGLUPacked (the same function; ours is held packed). "cls_patch_mean" has no
    timm global_pool: the export returns every token (global_pool='') and `pool` says how to embed them.
    """
    size, patch = parse_variant(variant)
    if pool not in _GLOBAL_POOL:
        raise ValueError(f"model.pool={pool!r}: choose one of {tuple(_GLOBAL_POOL)}")
    hidden = mlp_hidden(size, mlp, mlp_ratio)
    fc1_outputs = hidden if mlp == "gelu" else 2 * hidden
    args: dict[str, Any] = dict(
        img_size=image_size, patch_size=patch, embed_dim=size.width, depth=size.depth,
        num_heads=size.heads, mlp_ratio=timm_mlp_ratio(size.width, fc1_outputs),
    )
    if reg_tokens:
        args["reg_tokens"] = reg_tokens
    if no_embed_class:
        args["no_embed_class"] = True
    if init_values or mlp != "gelu":  # the SwiGLU builder's default init_values=1e-5 must be overridden
        args["init_values"] = init_values or None
    if pool == "mean":  # norm before pooling, then average every token: no class token, no fc_norm
        args.update(class_token=False, global_pool="avg", fc_norm=False)
    elif pool == "patch_mean":
        args.update(global_pool="avg", fc_norm=False)
    elif pool == "cls_patch_mean":
        args.update(global_pool="", fc_norm=False)
    architecture = SWIGLU_ARCH if mlp != "gelu" else TIMM_ARCHS.get(variant, GENERIC_ARCH)
    return TimmSpec(architecture, args, size.width, _GLOBAL_POOL[pool], tuple(image_mean), tuple(image_std), pool)


def hub_config(spec: TimmSpec, extra: Mapping[str, Any]) -> dict[str, Any]:
    """config.json in timm's Hugging Face layout (so `create_model('local-dir:DIR')` works), plus `extra`."""
    image_size = spec.model_args["img_size"]
    embedding = {"lmc_jax_embedding": spec.pool} if spec.pool == "cls_patch_mean" else {}
    return dict(
        architecture=spec.architecture,
        num_classes=0,
        num_features=spec.num_features,
        global_pool=spec.global_pool,
        model_args=dict(spec.model_args),
        pretrained_cfg=dict(
            tag="lmc_jax", custom_load=False, input_size=[3, image_size, image_size], fixed_input_size=True,
            interpolation="bicubic", crop_pct=1.0, crop_mode="center", mean=list(spec.mean),
            std=list(spec.std), num_classes=0, pool_size=None, first_conv="patch_embed.proj", classifier="head",
        ),
        **embedding,
        **extra,
    )


def _rows(depth: int, has_cls: bool, has_reg: bool = False, layer_scale: bool = False) -> list[tuple[tuple, str, str]]:
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
    if has_reg:
        rows.append((("reg_token",), "reg_token", "same"))
    for i in range(depth):
        for norm in ("norm1", "norm2"):
            rows.append((("blocks", i, norm, "scale"), f"blocks.{i}.{norm}.weight", "same"))
            rows.append((("blocks", i, norm, "bias"), f"blocks.{i}.{norm}.bias", "same"))
        for module, linear in (("attn", "qkv"), ("attn", "proj"), ("mlp", "fc1"), ("mlp", "fc2")):
            rows.append((("blocks", i, module, linear, "kernel"), f"blocks.{i}.{module}.{linear}.weight", "linear"))
            rows.append((("blocks", i, module, linear, "bias"), f"blocks.{i}.{module}.{linear}.bias", "same"))
        if layer_scale:
            rows += [(("blocks", i, ls, "gamma"), f"blocks.{i}.{ls}.gamma", "same") for ls in ("ls1", "ls2")]
    return rows


def _params_rows(params: Mapping[str, Any]) -> list[tuple[tuple, str, str]]:
    """The rows of an encoder's pure param dict, its options read from which parameters it has."""
    blocks = params["blocks"]
    first = blocks[min(blocks)] if blocks else {}
    return _rows(len(blocks), "cls_token" in params, "reg_token" in params, "ls1" in first)


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
    out = {}
    for path, key, layout in _params_rows(encoder_params):
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


def _expected_shapes(variant: str, pool: str, image_size: int, **arch: Any) -> dict[str, tuple[int, ...]]:
    """timm key → shape of our ViT's parameter (read from the model itself), in torch layout."""
    abstract = nnx.eval_shape(lambda: ViT(variant, image_size, pool=pool, rngs=nnx.Rngs(0), **arch))
    params = nnx.to_pure_dict(nnx.split(abstract, nnx.Param)[1])
    shapes = {}
    for path, key, layout in _params_rows(params):
        value = params
        for part in path:
            value = value[part]
        shapes[key] = _torch_shape(tuple(value.shape), layout)
    return shapes


def describe(state_dict: Mapping[str, np.ndarray]) -> str:
    """What a timm ViT state dict holds (width, patch, depth, MLP, class and register tokens), for messages."""
    parts = []
    if "patch_embed.proj.weight" in state_dict:
        shape = state_dict["patch_embed.proj.weight"].shape
        parts.append(f"width {shape[0]}, patch {shape[-1]}")
    depth = len({int(m.group(1)) for m in map(_BLOCK.match, state_dict) if m})
    parts.append(f"{depth} blocks")
    if "blocks.0.mlp.fc1.weight" in state_dict and "blocks.0.mlp.fc2.weight" in state_dict:
        fc1, fc2 = state_dict["blocks.0.mlp.fc1.weight"].shape[0], state_dict["blocks.0.mlp.fc2.weight"].shape[1]
        parts.append(f"SwiGLUPacked MLP {fc1}" if fc1 == 2 * fc2 else f"MLP {fc1}")
    parts.append("class token" if "cls_token" in state_dict else "no class token")
    if "reg_token" in state_dict:
        parts.append(f"{state_dict['reg_token'].shape[1]} register tokens")
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
    depth = parse_variant(variant)[0].depth
    if len({int(m.group(1)) for m in map(_BLOCK.match, sd) if m}) != depth:
        raise TimmWeightsError(f"{summary} with {depth} blocks; set model.variant to the size of the weights.")
    for key, shape in expected.items():
        if key in sd and key != "pos_embed" and tuple(sd[key].shape) != shape:  # its grid may be resampled
            same_width = sd.get("patch_embed.proj.weight", np.zeros((0,))).shape[:1] == expected[
                "patch_embed.proj.weight"][:1]
            fix = ("set model.mlp_ratio so that the MLP widths match (timm's int(width · mlp_ratio))"
                   if ".mlp." in key and same_width else "set model.variant to the size of the weights")
            raise TimmWeightsError(f"{summary}. {key}: shape {tuple(sd[key].shape)} in the weights, but "
                                   f"model.variant={variant!r} needs {shape}; {fix}.")
    if unknown:
        raise TimmWeightsError(f"{summary}. Unexpected keys {unknown[:8]}{' …' if len(unknown) > 8 else ''}: "
                               "lmc_jax's ViT has no such parameters (not a plain timm VisionTransformer?).")
    missing = sorted(set(expected) - set(sd))
    if missing:
        raise TimmWeightsError(f"{summary}. Missing keys {missing[:8]}{' …' if len(missing) > 8 else ''} "
                               "(timm qkv_bias=False or another non-standard layout?).")


def _refuse_unsupported(sd: dict[str, np.ndarray], variant: str, source: str) -> None:
    """Refuses, by name, the layouts and timm features our ViT does not have (none of their keys is ours)."""
    keys = sorted(key for key in sd if any(re.search(pattern, key) for pattern, _ in _UNSUPPORTED))
    features = sorted({name for key in keys for pattern, name in _UNSUPPORTED if re.search(pattern, key)})
    if features:
        raise TimmWeightsError(f"{source} holds a ViT with {describe(sd)}; model.variant={variant!r}. The weights "
                               f"use {'; '.join(features)}, which lmc_jax's ViT does not support (keys "
                               f"{keys[:4]}{' …' if len(keys) > 4 else ''}).")


def _check_arch(sd: dict[str, np.ndarray], source: str, pool: str, reg_tokens: int, mlp: str,
                init_values: float) -> None:
    """Refuses weights whose class/register tokens, MLP kind or layer scale differ from config.model's."""
    has_cls = "cls_token" in sd
    if has_cls != (pool != "mean"):
        fix = ("model.pool='cls' (or 'patch_mean' / 'cls_patch_mean')" if has_cls
               else "model.pool='mean' (timm class_token=False, global_pool='avg')")
        raise TimmWeightsError(f"{source} {'has' if has_cls else 'has no'} class token but model.pool={pool!r}; "
                               f"set {fix}.")
    found = sd["reg_token"].shape[1] if "reg_token" in sd and sd["reg_token"].ndim == 3 else 0
    if found != reg_tokens:
        raise TimmWeightsError(f"{source} holds {found} register tokens (timm reg_tokens) but "
                               f"model.reg_tokens={reg_tokens}; set model.reg_tokens={found}.")
    fc1, fc2 = sd.get("blocks.0.mlp.fc1.weight"), sd.get("blocks.0.mlp.fc2.weight")
    if fc1 is not None and fc2 is not None and fc1.ndim == fc2.ndim == 2:
        gated = fc1.shape[0] == 2 * fc2.shape[1]
        if gated != (mlp != "gelu"):
            fix = "model.mlp='swiglu_packed' (timm SwiGLUPacked / SwiGLU)" if gated else "model.mlp='gelu' (timm Mlp)"
            raise TimmWeightsError(f"{source}: blocks.0.mlp has fc1 {tuple(fc1.shape)} and fc2 {tuple(fc2.shape)}, "
                                   f"{'a gated' if gated else 'a plain GELU'} MLP, but model.mlp={mlp!r}; set {fix}.")
    if init_values > 0 and not any(_LAYER_SCALE.match(key) for key in sd):
        raise TimmWeightsError(f"{source} has no layer scale (blocks.*.ls1.gamma) but model.init_values="
                               f"{init_values}; set model.init_values=0.")


def _is_square(n: int) -> bool:
    """Whether n positions form a square patch grid."""
    return n > 0 and math.isqrt(n) ** 2 == n


def _pos_embed(pos: np.ndarray, num_prefix: int, no_embed_class: bool, grid: int, width: int, source: str,
               notes: list[str]) -> np.ndarray:
    """timm pos_embed → ours: covering the prefix tokens unless `no_embed_class`, resampled to `grid`."""
    if pos.ndim != 3 or pos.shape[0] != 1 or pos.shape[2] != width:
        raise TimmWeightsError(f"{source}: pos_embed has shape {tuple(pos.shape)}, expected (1, tokens, {width}).")
    tokens = pos.shape[1]
    if no_embed_class:
        if not _is_square(tokens):
            covered = num_prefix and _is_square(tokens - num_prefix)
            fix = ("its positions cover the prefix tokens (timm no_embed_class=False); set model.no_embed_class=False"
                   if covered else "not a square patch grid")
            raise TimmWeightsError(f"{source}: pos_embed has {tokens} positions; {fix}.")
        prefix = 0
    elif num_prefix and _is_square(tokens - num_prefix):
        prefix = num_prefix
    elif num_prefix and _is_square(tokens):  # timm no_embed_class=True into a model whose positions cover them
        pos = np.concatenate([np.zeros((1, num_prefix, width), np.float32), pos], axis=1)
        prefix = num_prefix
        notes.append("pos_embed does not cover the class/register tokens (timm no_embed_class=True): their "
                     "position rows are set to zero, which is the same function")
    elif not num_prefix and _is_square(tokens):
        prefix = 0
    else:
        raise TimmWeightsError(f"{source}: pos_embed has {tokens} positions, not {num_prefix} prefix tokens + a "
                               "square patch grid (set model.reg_tokens / model.no_embed_class to the weights').")
    patches = pos.shape[1] - prefix
    if math.isqrt(patches) != grid:
        notes.append(f"pos_embed resampled from a {math.isqrt(patches)}² to a {grid}² patch grid (bicubic)")
        pos = resize_pos_embed(pos, prefix, grid)
    return pos


def _pack_swiglu(sd: dict[str, np.ndarray], notes: list[str]) -> None:
    """timm SwiGLU's fc1_g / fc1_x → one SwiGLUPacked fc1 = [gate; value] (the same function), in place."""
    packed = 0
    for key in [k for k in sd if _SPLIT_SWIGLU.match(k)]:
        mlp, kind = _SPLIT_SWIGLU.match(key).groups()
        value_key = f"{mlp}.fc1_x.{kind}"
        if value_key not in sd:
            raise TimmWeightsError(f"{key} has no {value_key} beside it: not a timm SwiGLU.")
        sd[f"{mlp}.fc1.{kind}"] = np.concatenate([sd.pop(key), sd.pop(value_key)], axis=0)
        packed += 1
    if packed:
        notes.append("timm SwiGLU fc1_g/fc1_x packed into one fc1 (SwiGLUPacked layout, the same function)")


def from_timm(
    state_dict: Mapping[str, Any], variant: str, pool: str, image_size: int, *, source: str = "the weights",
    reg_tokens: int = 0, mlp: str = "gelu", mlp_ratio: float = 0.0, init_values: float = 0.0,
    no_embed_class: bool = False,
) -> tuple[dict[str, Any], list[str]]:
    """timm ViT state dict → our encoder's pure param dict (numpy float32), plus notes on what was adapted.

    Classification-head keys are dropped; layer scale (`ls1/ls2.gamma`) is kept when `init_values` > 0 and
    folded into the preceding projection otherwise (exactly the same function); timm SwiGLU is packed; a
    smaller or larger position grid is resampled. Anything else that does not fit raises TimmWeightsError
    naming key, shapes and the config key to set.
    """
    size, patch = parse_variant(variant)
    if image_size % patch:
        raise TimmWeightsError(f"image size {image_size} is not a multiple of patch size {patch} of {variant!r}")
    sd = {key: np.asarray(value, np.float32) for key, value in state_dict.items()}
    notes: list[str] = []
    head = sorted(key for key in sd if key.startswith("head."))
    if head:
        notes.append(f"classification head dropped: {head}")
    for key in head:
        del sd[key]
    _refuse_unsupported(sd, variant, source)
    _pack_swiglu(sd, notes)
    _check_arch(sd, source, pool, reg_tokens, mlp, init_values)
    fold = init_values <= 0
    gammas = {key: sd.pop(key) for key in [k for k in sd if _LAYER_SCALE.match(k)]} if fold else {}
    arch = dict(reg_tokens=reg_tokens, mlp=mlp, mlp_ratio=mlp_ratio, init_values=init_values,
                no_embed_class=no_embed_class)
    _check_keys(sd, _expected_shapes(variant, pool, image_size, **arch), variant, source)
    num_prefix = (pool != "mean") + reg_tokens
    sd["pos_embed"] = _pos_embed(sd["pos_embed"], num_prefix, no_embed_class, image_size // patch, size.width,
                                 source, notes)
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
    for path, key, layout in _rows(size.depth, pool != "mean", reg_tokens > 0, init_values > 0):
        node = params
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = np.ascontiguousarray(_to_flax_layout(sd[key], layout))
    return params, notes


def fold_input_normalization(params: Mapping[str, Any], mean: Any, std: Any, ours_mean: Any = IMAGE_MEAN,
                             ours_std: Any = IMAGE_STD) -> dict[str, Any]:
    """Encoder params that, on inputs normalised with (ours_mean, ours_std) (the model's own, ImageNet by
    default), compute what `params` computed on inputs normalised with (mean, std), e.g. timm's augreg (0.5, 0.5).

    (x − m)/s = ((x − ours_m)/ours_s)·(ours_s/s) + (ours_m − m)/s is affine per channel and the patch
    embedding is a VALID convolution, so the change folds into its kernel and bias exactly.
    """
    mean, std = np.asarray(mean, np.float64).reshape(3), np.asarray(std, np.float64).reshape(3)
    if np.any(std <= 0) or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))):
        raise TimmWeightsError(f"input normalisation mean={mean.tolist()} std={std.tolist()}: std must be > 0 and "
                               "both finite.")
    kernel = np.asarray(params["patch_embed"]["kernel"], np.float64)  # [p, p, 3, width]
    bias = np.asarray(params["patch_embed"]["bias"], np.float64)
    scale = np.asarray(ours_std, np.float64) / std
    shift = (np.asarray(ours_mean, np.float64) - mean) / std
    patch_embed = {"kernel": (kernel * scale[None, None, :, None]).astype(np.float32),
                   "bias": (bias + np.einsum("ijcw,c->w", kernel, shift)).astype(np.float32)}
    return {**params, "patch_embed": patch_embed}
