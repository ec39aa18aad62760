"""DANN reference: the reversal flips only the encoder's domain gradient, λ_p grows, the run saves and restores."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lmc_jax import objectives, parallel, runs, train
from lmc_jax.errors import UserError
from lmc_jax.evaluate.embed import make_encoder
from lmc_jax.losses import dann_schedule, domain_adversarial_loss
from lmc_jax.methods import training_config
from lmc_jax.objectives.dann import head_inputs
from lmc_jax.models.vit import build_model
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


def _tiles(seed: int = 0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(tree))]


@pytest.fixture(scope="module")
def dann_run(tiny_data_dir, tmp_path_factory):
    """The "dann" reference of the tiny config, trained by train.train into <workdir>/references/dann.

    With 2 accumulated micro-batches, so the logged λ_p also shows the traced step reaching each micro-batch.
    """
    config = tiny_config()
    config.data.data_dir = str(tiny_data_dir)
    config.data.builder_config = TINY_BUILDER
    config.optimizer.grad_accum_steps = 2
    ref = training_config(config, "dann")
    workdir = tmp_path_factory.mktemp("run") / "references" / "dann"
    return ref, workdir, train.train(ref, workdir)


def test_training_config_adds_the_dann_term_only_for_dann():
    config = tiny_config()
    config.objectives = ("cross_correlation", "dann")  # even then, the geometric-only reference stays Barlow Twins
    geometric, dann = training_config(tiny_config(), "geometric_only"), training_config(config, "dann")
    assert not geometric.lmc.stain_views and geometric.objectives == ("cross_correlation",)
    assert not dann.lmc.stain_views and tuple(dann.objectives) == ("cross_correlation", "dann")
    assert tiny_config().objectives == ("cross_correlation",)  # LMC itself trains without the domain head
    assert training_config(config, "lmc").to_dict() == config.to_dict()
    for name in ("imagenet", "untrained"):
        with pytest.raises(UserError, match="not a trained method"):
            training_config(config, name)


def test_domain_head_is_added_without_changing_the_encoder_and_projector_start():
    config = tiny_config()
    plain = nnx.to_pure_dict(nnx.state(build_model(config.model, 24, seed=0), nnx.Param))
    dann_config = training_config(config, "dann")
    dann = nnx.to_pure_dict(nnx.state(build_model(config.model, 24, seed=0, heads=objectives.heads(dann_config)),
                                      nnx.Param))
    assert set(plain) == {"encoder", "projector"}
    assert set(dann) == {"encoder", "projector", "domain_head"}
    for part in ("encoder", "projector"):
        for a, b in zip(_leaves(plain[part]), _leaves(dann[part]), strict=True):
            np.testing.assert_array_equal(a, b)


def test_reversal_flips_and_scales_only_the_encoders_domain_gradient():
    """∇(total, weight w) − ∇(total, weight 0) is the domain term's gradient through the reversal layer:
    −λ·w × the plain gradient on the encoder, +w × it on the head, nothing on the projector."""
    config = training_config(tiny_config(), "dann")
    trainer = train.make_trainer(config, parallel.make_mesh())
    params = nnx.to_pure_dict(nnx.state(train._model_factory(config)(), nnx.Param))
    tiles, key, step, weight = _tiles(), jax.random.key(3), 1, 2.0

    def total(p, w):
        run = training_config(tiny_config(), "dann")
        run.dann.weight = w
        return train.loss_and_metrics(p, trainer.graphdef, {"image": tiles}, key, run, step=step)

    def plain_domain_loss(p):  # the same features and labels, no reversal
        model = nnx.merge(trainer.graphdef, p)
        features = model.embed(objectives.views(key, tiles, config)[0])
        logits = model.domain_head(head_inputs(jnp.stack([features[0], features[-1]])))
        return domain_adversarial_loss(logits, jnp.broadcast_to(jnp.array([[0.0], [1.0]]), logits.shape))

    (with_domain, metrics), (without, _), plain = jax.jit(lambda p: (
        jax.grad(lambda q: total(q, weight), has_aux=True)(p),
        jax.grad(lambda q: total(q, 0.0), has_aux=True)(p),
        jax.grad(plain_domain_loss)(p),
    ))(params)
    lam = float(dann_schedule(step / config.num_steps, config.dann.gamma))
    np.testing.assert_allclose(metrics["dann_lambda"], lam, rtol=1e-6)
    assert 0.5 < lam < 0.9  # a scale that neither 0 nor 1 would pass for
    for part, factor in (("encoder", -lam * weight), ("domain_head", weight), ("projector", 0.0)):
        expected = [factor * g for g in _leaves(plain[part])]
        got = [a - b for a, b in zip(_leaves(with_domain[part]), _leaves(without[part]), strict=True)]
        scale = max(float(np.abs(g).max()) for g in _leaves(plain[part]))
        assert part == "projector" or scale > 1e-3  # the domain term does reach this part
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, atol=2e-4 * max(scale, 1e-3))


def test_the_views_are_the_same_with_and_without_the_dann_rendering():
    config, tiles, key = tiny_config(), _tiles(), jax.random.key(5)
    config.lmc.stain_views = False
    plain, counts = objectives.views(key, tiles, config)
    with_dann, dann_counts = objectives.views(key, tiles, training_config(config, "dann"))
    assert counts == {} and dann_counts == {"dann": 1}
    np.testing.assert_array_equal(with_dann[: config.lmc.num_views], plain)
    assert with_dann.shape[0] == config.lmc.num_views + 1
    assert not np.allclose(with_dann[-1], with_dann[0])  # the rendering carries the stain family


def test_dann_reference_logs_a_finite_domain_loss_and_growing_lambda(dann_run):
    config, workdir, _ = dann_run
    records = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 6]
    for record in records:
        assert np.isfinite(record["dann_loss"]) and record["dann_loss"] > 0
        assert 0.0 <= record["dann_accuracy"] <= 1.0
        # metrics of the step that ran from state step `step - 1`
        np.testing.assert_allclose(record["dann_lambda"], float(dann_schedule((record["step"] - 1) / config.num_steps)),
                                   rtol=1e-5)
    lambdas = [r["dann_lambda"] for r in records]
    assert all(a < b for a, b in zip(lambdas, lambdas[1:]))


def test_dann_reference_restores_from_its_workdir_and_embeds(dann_run):
    config, workdir, final = dann_run
    mesh = parallel.make_mesh()
    run = runs.load_run(workdir, mesh=mesh)
    graphdef, params, step = run.graphdef, run.params, run.step
    assert step == config.num_steps and run.weights == "raw"  # the run keeps no EMA
    assert "domain_head" in params
    for got, want in zip(_leaves(params), _leaves(final["params"]), strict=True):
        np.testing.assert_array_equal(got, want)
    initial = runs.initial_params(config, mesh)[1]
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(params["domain_head"]),
                                                        _leaves(initial["domain_head"]), strict=True))
    embeddings = make_encoder(graphdef, params, config.data.crop_size, mesh)(np.asarray(_tiles()))
    assert embeddings.shape == (16, 32) and np.all(np.isfinite(embeddings))


def _tinted_waves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A set whose domain is trivially predictable: tiles (uint8 [n, 32, 32, 3]) of a sine grating whose FREQUENCY is
    the label (0.3 or 0.9 rad/px, random orientation and phase) under one of three colour tints, the domain."""
    rng = np.random.default_rng(seed)
    labels, domains = rng.integers(0, 2, n), rng.integers(0, 3, n)
    yy, xx = np.mgrid[:32, :32]
    tiles = np.empty((n, 32, 32, 3), np.uint8)
    for i, (y, d) in enumerate(zip(labels, domains)):
        angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        wave = 0.5 + 0.35 * np.sin((0.9 if y else 0.3) * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
        image = wave[..., None] * (0.6 + 0.25 * np.eye(3)[d]) + rng.normal(0, 0.03, (32, 32, 3))
        tiles[i] = np.clip(image * 255, 0, 255).astype(np.uint8)
    return tiles, labels, domains


def _trained_features(objectives_, steps: int = 800):
    """Encoder features (fit and held-out sets) after `steps` of the given objective on the tinted waves."""
    from lmc_jax.config_edit import with_values
    from lmc_jax.evaluate.embed import encoder_features

    config = with_values(tiny_config(), {
        "objectives": objectives_, "lmc.num_views": 1, "lmc.stain_views": False, "num_steps": steps,
        "batch_size": 32, "optimizer.warmup_steps": 10, "dann.domain_field": "site", "dann.num_domains": 3,
        "dann.weight": 0.3, "dann.head_lr_scale": 100.0})
    mesh = parallel.make_mesh()
    trainer = train.make_trainer(config, mesh)
    state, step = train.init_state(trainer), train.compile_step(trainer)
    images, labels, domains = _tinted_waves(2048, 0)
    rng, key = np.random.default_rng(1), jax.random.key(0)
    for _ in range(steps):
        rows = rng.choice(len(labels), 32, replace=False)
        state, _ = step(state, {"image": jnp.asarray(images[rows]), "label": jnp.asarray(labels[rows]),
                                "site": jnp.asarray(domains[rows])}, key)
    features = encoder_features(trainer.graphdef, state["params"], config.data.crop_size, mesh, 256)
    return [(features(x), y, d) for x, y, d in (_tinted_waves(512, 8), _tinted_waves(512, 7))]


def test_site_dann_takes_a_trivial_domain_out_of_the_features_and_keeps_the_task():
    """Supervised alone keeps the tint (a fresh domain probe on its frozen features names it almost always); the
    domain-general model (supervised + K-way reversal, weight 0.3, head lr × 100) brings that probe toward chance
    (1/3) while a fresh task probe stays near perfect."""
    from lmc_jax.evaluate import lomo
    from lmc_jax.evaluate.kernels import probe

    def scores(objectives_):
        (x_fit, y_fit, d_fit), (x_test, y_test, d_test) = _trained_features(objectives_)
        task = np.mean((np.asarray(probe.predict_proba(probe.fit_logistic(x_fit, y_fit), x_test)) > 0.5) == y_test)
        return lomo.domain_probe(x_fit, d_fit, x_test, d_test), task

    supervised_domain, supervised_task = scores(("supervised",))
    dann_domain, dann_task = scores(("supervised", "dann"))
    assert supervised_domain > 0.9 and supervised_task > 0.95
    assert dann_domain < supervised_domain - 0.25  # measured 0.46 against 0.96 (chance 0.33)
    assert dann_task > 0.95
