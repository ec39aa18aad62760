"""ViT encoder and projector: shapes, pooling, variants, and the projector's per-view batch norm."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from lmc_jax.models.vit import SIZES, BatchNorm, ViT, build_model, parse_variant


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
    with pytest.raises(ValueError, match="model.variant"):
        parse_variant("Huge/14")


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
