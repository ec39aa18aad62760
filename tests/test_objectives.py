"""Objectives composed from loss terms: the sum of the configured terms, each term's renderings and heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmc_jax import objectives, train
from lmc_jax.errors import ConfigError
from lmc_jax.losses import dann_schedule, lmc_loss
from lmc_jax.methods import training_config
from lmc_jax.optim import make_optimizer
from lmc_jax.objectives.dann import head_inputs
from tests.tiny_config import tiny_config


def _tiles() -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))


def _model(config):
    graphdef, params = nnx.split(train._model_factory(config)(), nnx.Param)
    return graphdef, nnx.to_pure_dict(params)


def test_every_module_of_the_package_but_base_is_a_term():
    assert set(objectives.TERMS) == {"cross_correlation", "dann", "supervised"}
    config = tiny_config()
    config.objectives = ("cross_correlation", "supervisd")
    with pytest.raises(ConfigError, match=r"names \['supervisd'\]"):
        objectives.terms(config)


def test_the_lmc_objective_is_the_cross_correlation_of_the_views():
    config, key, tiles = tiny_config(), jax.random.key(1), _tiles()
    graphdef, params = _model(config)
    loss, metrics = train.loss_and_metrics(params, graphdef, {"image": tiles}, key, config, 3)
    views, counts = objectives.views(key, tiles, config)
    assert counts == {} and views.shape[0] == config.lmc.num_views
    want, terms = lmc_loss(nnx.merge(graphdef, params)(views), config.lmc.off_diagonal_weight)
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert set(metrics) == set(terms)


def test_the_dann_objective_adds_its_weighted_term_to_the_cross_correlation():
    config, key, tiles = training_config(tiny_config(), "dann"), jax.random.key(2), _tiles()
    graphdef, params = _model(config)
    assert "domain_head" in params
    _, plain_metrics = train.loss_and_metrics(params, graphdef, {"image": tiles}, key, tiny_config(), 3)
    for weight in (0.0, 2.5):
        config.dann.weight = weight
        loss, metrics = train.loss_and_metrics(params, graphdef, {"image": tiles}, key, config, 3)
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


def _labelled(config, labels, sites=None):
    return {"image": _tiles(), "label": jnp.asarray(labels), "site": jnp.asarray(sites if sites is not None else labels)}


def test_the_supervised_term_is_the_cross_entropy_of_every_view_and_skips_unlabelled_rows():
    config, key = tiny_config(), jax.random.key(4)
    config.objectives, config.lmc.num_views = ("supervised",), 1
    graphdef, params = _model(config)
    assert params["classifier"]["out"]["kernel"].shape[-1] == config.supervised.num_classes
    labels = np.array([0, 1] * 8)
    batch = _labelled(config, labels)
    loss, metrics = train.loss_and_metrics(params, graphdef, batch, key, config, 0)
    model = nnx.merge(graphdef, params)
    logits = model.classifier(model.embed(objectives.views(key, batch["image"], config)[0]))[0]
    want = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(16), labels])
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    hidden = labels.copy()
    hidden[8:] = -1  # unlabelled rows: the loss is the mean over the labelled half only
    loss_half, _ = train.loss_and_metrics(params, graphdef, _labelled(config, hidden), key, config, 0)
    want_half = -np.mean(np.asarray(jax.nn.log_softmax(logits))[np.arange(8), labels[:8]])
    np.testing.assert_allclose(loss_half, want_half, rtol=1e-5)
    config.supervised.weight = 3.0
    np.testing.assert_allclose(train.loss_and_metrics(params, graphdef, batch, key, config, 0)[0], 3 * want, rtol=1e-5)
    assert 0 <= float(metrics["supervised_accuracy"]) <= 1


def _site_dann_config():
    config = tiny_config()
    config.objectives, config.lmc.num_views = ("supervised", "dann"), 2
    config.dann.domain_field, config.dann.num_domains = "site", 3
    return config


def test_the_site_dann_term_names_each_views_domain_and_ignores_rows_without_one():
    config, key = _site_dann_config(), jax.random.key(5)
    graphdef, params = _model(config)
    assert params["domain_head"]["out"]["kernel"].shape[-1] == 3
    sites = np.array([0, 1, 2, -1] * 4)
    batch = _labelled(config, np.zeros(16, np.int64), sites)
    assert objectives.views(key, batch["image"], config)[1] == {}  # no rendering: the domains are the batch's
    _, metrics = train.loss_and_metrics(params, graphdef, batch, key, config, 5)
    model = nnx.merge(graphdef, params)
    features = head_inputs(model.embed(objectives.views(key, batch["image"], config)[0]))  # z-scored, as the head sees
    logits = model.domain_head(features)  # [K, B, 3]
    log_p = np.asarray(jax.nn.log_softmax(logits))
    rows = np.flatnonzero(sites >= 0)
    want = -np.mean(log_p[:, rows, sites[rows]])
    np.testing.assert_allclose(metrics["dann_loss"], want, rtol=1e-5)


def test_head_lr_scale_multiplies_the_domain_heads_update_and_nothing_else():
    config = _site_dann_config()
    graphdef, params = _model(config)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.01), params)

    def update(factor):
        run = _site_dann_config()
        run.dann.head_lr_scale = factor
        run.optimizer.grad_clip_norm = 0.0
        tx, _ = make_optimizer(run)
        state = tx.init(params)
        for _ in range(3):  # past warm-up's zero learning rate at step 0
            updates, state = tx.update(grads, state, params)
        return updates

    one, ten = update(1.0), update(10.0)
    for part in params:
        for a, b in zip(jax.tree.leaves(one[part]), jax.tree.leaves(ten[part])):
            np.testing.assert_allclose(b, (10.0 if part == "domain_head" else 1.0) * a, rtol=1e-5)
    assert max(float(np.abs(a).max()) for a in jax.tree.leaves(one["domain_head"])) > 0


def test_the_confusion_adversary_trains_the_head_on_detached_features_and_the_encoder_towards_uniform():
    config, key = _site_dann_config(), jax.random.key(7)
    config.dann.adversary, config.objectives, config.dann.weight = "confusion", ("dann",), 1.0
    graphdef, params = _model(config)
    batch = _labelled(config, np.zeros(16, np.int64), np.array([0, 1, 2, 0] * 4))
    step = 10
    lam = float(dann_schedule(step / config.num_steps, config.dann.gamma))
    got = jax.grad(lambda p: train.loss_and_metrics(p, graphdef, batch, key, config, step)[0])(params)

    def parts(p, head_params, encoder_params):  # (the head's CE on detached features, the uniform-CE)
        views = objectives.views(key, batch["image"], config)[0]
        feats = head_inputs(nnx.merge(graphdef, {**p, "encoder": encoder_params}).embed(views))
        head = nnx.merge(graphdef, {**p, "domain_head": head_params}).domain_head
        labels = jnp.broadcast_to(batch["site"], feats.shape[:2])
        ce = -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(head(jax.lax.stop_gradient(feats))),
                                           labels[..., None], axis=-1))
        return ce, -jnp.mean(jax.nn.log_softmax(head(feats)))

    head_grad = jax.grad(lambda h: parts(params, h, params["encoder"])[0])(params["domain_head"])
    encoder_grad = jax.grad(lambda e: parts(params, params["domain_head"], e)[1])(params["encoder"])
    for g, want in zip(jax.tree.leaves(got["domain_head"]), jax.tree.leaves(head_grad)):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-7)
    scale = max(float(np.abs(w).max()) for w in jax.tree.leaves(encoder_grad))
    assert scale > 0
    for g, want in zip(jax.tree.leaves(got["encoder"]), jax.tree.leaves(encoder_grad)):
        np.testing.assert_allclose(g, lam * want, atol=1e-4 * scale)
