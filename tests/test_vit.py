"""ViT encoder and projector: shapes, pooling, variants, and the projector's per-view batch norm."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmc_jax.models.vit import POOLS, SIZES, BatchNorm, ViT, ViTSize, arch_kwargs, build_model, parse_variant


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_encoder_output_shape_and_pos_embed(pool):
    model = ViT("mu/8", 32, pool=pool, rngs=nnx.Rngs(0))
    out = model(jnp.full((3, 32, 32, 3), 0.5))
    assert out.shape == (3, SIZES["mu"].width) and out.dtype == jnp.float32
    assert model.pos_embed[...].shape == (1, 16 + (pool == "cls"), SIZES["mu"].width)


def test_bfloat16_compute_keeps_float32_params():
    model = ViT("mu/8", 16, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert np.isfinite(np.asarray(model(jnp.ones((2, 16, 16, 3))))).all()


def test_remat_gives_same_output():
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    plain = ViT("mu/8", 16, rngs=nnx.Rngs(0))(x)
    remat = ViT("mu/8", 16, remat=True, rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(plain, remat, atol=1e-6)


def test_parse_variant_rejects_unknown():
    assert parse_variant("S/16") == (SIZES["S"], 16)
    assert parse_variant("1536x24x24/14") == (ViTSize(1536, 24, 24, 6144), 14)  # UNI2-h's size
    with pytest.raises(ValueError, match="model.variant"):
        parse_variant("Huge/14")


@pytest.mark.parametrize("pool", POOLS)
@pytest.mark.parametrize("no_embed_class", [False, True])
def test_register_tokens_layer_scale_and_swiglu(pool, no_embed_class):
    """Registers (never pooled), positions with or without the prefix, SwiGLUPacked and layer scale."""
    model = ViT("mu/8", 16, pool=pool, reg_tokens=3, mlp="swiglu_packed", mlp_ratio=3.0, init_values=1e-5,
                no_embed_class=no_embed_class, rngs=nnx.Rngs(0))
    prefix = (pool != "mean") + 3
    assert model.pos_embed[...].shape == (1, 4 + (0 if no_embed_class else prefix), 32)
    assert model.reg_token[...].shape == (1, 3, 32) and model.num_prefix_tokens == prefix
    assert model.blocks[0].mlp.fc1.kernel[...].shape == (32, 96) and model.blocks[0].mlp.fc2.kernel[...].shape == (48, 32)
    np.testing.assert_array_equal(model.blocks[1].ls2.gamma[...], np.full(32, 1e-5, np.float32))
    x = jax.random.uniform(jax.random.key(2), (2, 16, 16, 3))
    tokens = model.tokens(x)
    assert tokens.shape == (2, prefix + 4, 32)
    out = model(x)
    assert out.shape == (2, model.num_features) and model.num_features == 32 * (1 + (pool == "cls_patch_mean"))
    if pool in ("mean", "patch_mean"):
        np.testing.assert_allclose(out, tokens[:, prefix:].mean(axis=1), atol=1e-6)


def test_configs_without_the_new_keys_build_the_plain_vit():
    """Runs written before the foundation-model options load as they were: no registers, GELU MLP, ImageNet."""
    old = ml_collections.ConfigDict(dict(variant="mu/8", pool="cls", dtype="float32", projector_dims=(8,)))
    assert arch_kwargs(old) == dict(reg_tokens=0, mlp="gelu", mlp_ratio=0.0, init_values=0.0, no_embed_class=False,
                                    image_mean=(0.485, 0.456, 0.406), image_std=(0.229, 0.224, 0.225))
    params = nnx.to_pure_dict(nnx.state(build_model(old, 16, seed=0).encoder, nnx.Param))
    assert sorted(params) == ["blocks", "cls_token", "norm", "patch_embed", "pos_embed"]
    assert sorted(params["blocks"][0]) == ["attn", "mlp", "norm1", "norm2"]


def test_concatenated_pooling_widens_the_projector_input():
    cfg = ml_collections.ConfigDict(dict(variant="mu/8", pool="cls_patch_mean", reg_tokens=2, dtype="float32",
                                         projector_dims=(12,)))
    model = build_model(cfg, 16, seed=0)
    assert model.projector.out.kernel[...].shape == (64, 12)
    assert model(jnp.ones((2, 3, 16, 16, 3))).shape == (2, 3, 12)


def test_bad_architecture_options_are_refused():
    with pytest.raises(ValueError, match="model.mlp='relu'"):
        ViT("mu/8", 16, mlp="relu", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="even int"):
        ViT("mu/8", 16, mlp="swiglu_packed", mlp_ratio=1.5 + 1 / 32, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.pool='max'"):
        ViT("mu/8", 16, pool="max", rngs=nnx.Rngs(0))


def test_image_size_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of patch"):
        ViT("mu/8", 30, rngs=nnx.Rngs(0))


def test_batch_norm_normalises_each_view_separately():
    x = jnp.stack([jnp.arange(8.0)[:, None] * jnp.ones((8, 4)), 100 + 5 * jnp.arange(8.0)[:, None] * jnp.ones((8, 4))])
    y = BatchNorm(4)(x)
    np.testing.assert_allclose(y.mean(axis=1), 0, atol=1e-5)
    np.testing.assert_allclose(y[0], y[1], atol=1e-3)


def test_lmc_model_maps_views_to_projections():
    cfg = ml_collections.ConfigDict(dict(variant="mu/8", pool="mean", dtype="float32", projector_dims=(24, 12)))
    model = build_model(cfg, 16, seed=0)
    z = model(jax.random.uniform(jax.random.key(0), (2, 4, 16, 16, 3)))
    assert z.shape == (2, 4, 12)
