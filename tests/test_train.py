"""Training loop: crash + resume equals an uninterrupted run; corrupt checkpoints are set aside, never lost."""

import json
import pathlib

import jax
import ml_collections
import numpy as np
import pytest

from lmc_jax import checkpoint, parallel, runs, train
from lmc_jax.errors import UserError
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


def _config(data_dir: pathlib.Path):
    config = tiny_config()
    config.data.data_dir = str(data_dir)
    config.data.builder_config = TINY_BUILDER
    return config


def _crash_after(calls: int, fn):
    """`fn`, but the call after `calls` calls raises: a run dying mid-way through a step."""
    left = [calls]

    def wrapped(*args, **kwargs):
        if left[0] == 0:
            raise KeyboardInterrupt("simulated crash")
        left[0] -= 1
        return fn(*args, **kwargs)

    return wrapped


def _params(state) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(state["params"]))]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    return workdir, train.train(_config(tiny_data_dir), workdir)


def test_crash_then_resume_is_bit_identical(tiny_data_dir, tmp_path, monkeypatch, uninterrupted):
    config = _config(tiny_data_dir)
    original = parallel.host_to_global
    monkeypatch.setattr(parallel, "host_to_global", _crash_after(4, original))
    with pytest.raises(KeyboardInterrupt):
        train.train(config, tmp_path)
    monkeypatch.setattr(parallel, "host_to_global", original)
    checkpointer = checkpoint.Checkpointer(tmp_path / "checkpoints")
    checkpointer.wait()
    assert checkpointer.all_steps() == [2, 4]  # died during step 5
    resumed = train.train(config, tmp_path)
    assert int(resumed["step"]) == config.num_steps
    for got, want in zip(_params(resumed), _params(uninterrupted[1]), strict=True):
        np.testing.assert_array_equal(got, want)


def test_metrics_are_logged(uninterrupted):
    workdir, _ = uninterrupted
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3  # every 2 of 6 steps
    assert (workdir / "config.json").exists()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(workdir / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in lines]
    assert [e.step for e in events.Scalars("loss")] == [r["step"] for r in logged] == [2, 4, 6]
    np.testing.assert_allclose([e.value for e in events.Scalars("loss")], [r["loss"] for r in logged], rtol=1e-6)


def test_corrupt_latest_checkpoint_is_set_aside_and_older_one_restored(tiny_data_dir, tmp_path, uninterrupted):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    steps = checkpoint.Checkpointer(workdir / "checkpoints").all_steps()
    latest = workdir / "checkpoints" / str(steps[-1])
    for path in (latest / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    config = _config(tiny_data_dir)
    trainer = train.make_trainer(config, parallel.make_mesh())
    restored = checkpoint.Checkpointer(workdir / "checkpoints").restore_latest(train.abstract_state(trainer), None)
    assert restored is not None and restored[0] == steps[-2]
    assert not latest.exists()
    assert (latest.parent / f"{steps[-1]}{checkpoint.CORRUPT_SUFFIX}").is_dir()  # kept for inspection


def test_explicit_restore_of_a_broken_step_names_the_directory(tiny_data_dir, tmp_path, uninterrupted):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(uninterrupted[0], workdir)
    step = checkpoint.Checkpointer(workdir / "checkpoints").all_steps()[-1]
    for path in (workdir / "checkpoints" / str(step) / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(b"")
    trainer = train.make_trainer(_config(tiny_data_dir), parallel.make_mesh())
    with pytest.raises(checkpoint.CheckpointError, match=str(step)):
        checkpoint.Checkpointer(workdir / "checkpoints").restore(step, train.abstract_state(trainer))
    assert (workdir / "checkpoints" / str(step)).is_dir()


def test_missing_checkpoint_is_a_clear_error(tiny_data_dir, tmp_path):
    config = _config(tiny_data_dir)
    (tmp_path / "config.json").write_text(config.to_json())
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoints/"):
        runs.load_run(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint in"):
        runs.load_run(tmp_path / "checkpoints")


def test_non_finite_metric_stops_with_step_and_name():
    with pytest.raises(FloatingPointError, match=r"step 7: loss=nan"):
        train._check_finite({"loss": float("nan"), "grad_norm": 1.0}, 7, "fix")
    with pytest.raises(UserError, match=r"step 7: .* step 4, is the last good state: rerun with a lower learning "
                                        r"rate \(e.g. --config.optimizer.learning_rate=1000\) and --config.resume=True"):
        train._check_finite({"loss": float("inf")}, 7, train._fix(ml_collections.ConfigDict(
            {"optimizer": {"learning_rate": 1e4}}), 4))


def test_a_diverged_or_non_finite_state_is_refused_before_saving():
    state = {"step": jax.numpy.zeros((), jax.numpy.int32), "params": {"w": jax.numpy.ones(3)},
             "opt_state": {"mu": jax.numpy.zeros(3)}}
    limit = train._weight_limit(state)
    assert limit == train.DIVERGENCE_FACTOR
    train._check_state(state, 2, limit, "")
    with pytest.raises(train.DivergedError, match=r"step 2: the weights diverged \(max \|weight\| = 2e\+03 > 1e\+03\)"):
        train._check_state({**state, "params": {"w": jax.numpy.full(3, 2e3)}}, 2, limit, "")
    with pytest.raises(train.DivergedError, match="non-finite"):
        train._check_state({**state, "opt_state": {"mu": jax.numpy.full(3, jax.numpy.nan)}}, 2, limit, "")


def test_gradient_accumulation_averages_strided_micro_batches(tiny_data_dir):
    config = _config(tiny_data_dir)
    config.optimizer.grad_accum_steps = 2
    trainer = train.make_trainer(config, parallel.make_mesh())
    params = train.init_state(trainer)["params"]
    tiles = jax.numpy.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    key = jax.random.key(3)
    (loss, _), grads = jax.jit(lambda p, t: train._accumulated_grads(trainer, p, {"image": t}, key, 0))(params, tiles)
    grad_fn = jax.value_and_grad(train.loss_and_metrics, has_aux=True)
    parts = [grad_fn(params, trainer.graphdef, {"image": tiles[m::2]}, jax.random.fold_in(key, m), config, 0) for m in range(2)]
    np.testing.assert_allclose(loss, (parts[0][0][0] + parts[1][0][0]) / 2, rtol=1e-5)
    want = jax.tree.map(lambda a, b: (a + b) / 2, parts[0][1], parts[1][1])
    scale = max(float(np.abs(leaf).max()) for leaf in jax.tree.leaves(want))
    for got, expected in zip(jax.tree.leaves(grads), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(got, expected, atol=1e-5 * scale)


def test_ema_tracks_parameters(tiny_data_dir):
    config = _config(tiny_data_dir)
    config.optimizer.ema_decay = 0.5
    trainer = train.make_trainer(config, parallel.make_mesh())
    state = train.init_state(trainer)
    before = jax.device_get(state["params"])
    tiles = jax.numpy.asarray(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    state, _ = train.compile_step(trainer)(state, {"image": tiles}, jax.random.key(0))
    after = jax.device_get(state["params"])
    for ema, b, a in zip(jax.tree.leaves(jax.device_get(state["ema_params"])), jax.tree.leaves(before),
                         jax.tree.leaves(after), strict=True):
        np.testing.assert_allclose(ema, 0.5 * b + 0.5 * a, atol=1e-6)


def test_train_steps_make_no_implicit_host_device_transfer(tiny_data_dir):
    """The loop's feeding and compiled step under transfer_guard("disallow"): each batch crosses to the device
    only through its explicit put; the step itself copies nothing between host and device."""
    from data_pipelines import input_pipeline

    config = _config(tiny_data_dir)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    trainer = train.make_trainer(config, mesh)
    state = train.init_state(trainer)
    key = jax.random.key(config.seed)
    data_iter = input_pipeline.make_train_iterator(config, config.data.data_dir)
    step = train.compile_step(trainer)
    host_tiles = next(data_iter)["image"]
    with jax.transfer_guard("disallow"):
        with pytest.raises(Exception, match="host-to-device"):  # the guard is live: a numpy batch is refused
            step(state, {"image": host_tiles}, key)
        for _ in range(2):
            state, metrics = step(state, train._next_global_batch(data_iter, mesh), key)
        jax.block_until_ready((state, metrics))
    assert int(jax.device_get(state["step"])) == 2
