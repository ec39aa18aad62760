"""Objectives composed from loss terms: the sum of the configured terms, each term's renderings and heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmc_jax import objectives, train
from lmc_jax.errors import ConfigError
from lmc_jax.losses import lmc_loss
from lmc_jax.methods import training_config
from tests.tiny_config import tiny_config


def _tiles() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))


def _model(config):
    graphdef, params = nnx.split(train._model_factory(config)(), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def test_every_module_of_the_package_but_base_is_a_term():
    assert set(objectives.TERMS) == {"cross_correlation", "dann"}
    config = tiny_config()
    config.objectives = ("cross_correlation", "supervised")
    with pytest.raises(ConfigError, match=r"names \['supervised'\]"):
        objectives.terms(config)


def test_the_lmc_objective_is_the_cross_correlation_of_the_views():
    config, key, tiles = tiny_config(), jax.random.key(1), _tiles()
    graphdef, params = _model(config)
    loss, metrics = train.loss_and_metrics(params, graphdef, tiles, key, config, 3)
    views, counts = objectives.views(key, tiles, config)
    assert counts == {} and views.shape[0] == config.lmc.num_views
    want, terms = lmc_loss(nnx.merge(graphdef, params)(views), config.lmc.off_diagonal_weight)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert set(metrics) == set(terms)


def test_the_dann_objective_adds_its_weighted_term_to_the_cross_correlation():
    config, key, tiles = training_config(tiny_config(), "dann"), jax.random.key(2), _tiles()
    graphdef, params = _model(config)
    assert "domain_head" in params
    _, plain_metrics = train.loss_and_metrics(params, graphdef, tiles, key, tiny_config(), 3)
    for weight in (0.0, 2.5):
        config.dann.weight = weight
        loss, metrics = train.loss_and_metrics(params, graphdef, tiles, key, config, 3)
        model = nnx.merge(graphdef, params)
        embedded = model.embed(objectives.views(key, tiles, config)[0])
        cc, _ = lmc_loss(model.projector(embedded[:config.lmc.num_views]), config.lmc.off_diagonal_weight)
        np.testing.assert_allclose(loss, cc + weight * metrics["dann_loss"], rtol=1e-5)
        assert {"on_diagonal", "off_diagonal", "dann_loss", "dann_lambda", "dann_accuracy"} <= set(metrics)
    assert "dann_loss" not in plain_metrics


def test_features_are_split_back_into_views_and_each_terms_renderings():
    embedded = jnp.arange(5 * 2 * 3, dtype=jnp.float32).reshape(5, 2, 3)
    features = objectives.split_features(embedded, 2, {"a": 1, "b": 2})
    assert features.offsets == {"a": 2, "b": 3}
    np.testing.assert_array_equal(features.views, embedded[:2])
    np.testing.assert_array_equal(features.view(1), embedded[1])
    np.testing.assert_array_equal(features.rendering("a"), embedded[2])
    np.testing.assert_array_equal(features.rendering("b", 1), embedded[4])
