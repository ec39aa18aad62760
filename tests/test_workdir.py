"""Workdir safety: a config change is refused (nothing renamed), resume=False moves the old run aside, one live
run per workdir (stale locks taken over), diverged weights are never checkpointed, orbax leftovers moved aside."""

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lmc_jax import checkpoint, methods, parallel, runs, train, workdir
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


def _config(data_dir, **overrides):
    config = tiny_config()
    config.data.data_dir = str(data_dir)
    config.data.builder_config = TINY_BUILDER
    config.num_steps = 4
    config.eval.at_end = False
    return methods._derived(**overrides)(config)


def _steps(path) -> list[str]:
    return sorted(p.name for p in (path / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def trained(tiny_data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("trained")
    train.train(_config(tiny_data_dir), path)
    return path


@pytest.fixture()
def run(trained, tmp_path):
    """A private copy of the trained run."""
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def test_config_change_is_refused_naming_the_key_and_nothing_is_renamed(tiny_data_dir, run):
    before, config_json = _steps(run), (run / "config.json").read_text()
    with pytest.raises(workdir.WorkdirError, match=r"model\.projector_dims \(was \[32, 32\], now \[16, 16\]\)") as err:
        train.train(_config(tiny_data_dir, **{"model.projector_dims": (16, 16)}), run)
    message = str(err.value)
    assert "\n" not in message and "--config.resume=False" in message and "num_steps" not in message
    assert _steps(run) == before == ["2", "4"]  # nothing set aside as .unrestorable
    assert (run / "config.json").read_text() == config_json
    assert not (run / workdir.LOCK).exists()  # released


def test_optimizer_tree_changes_are_structural_and_others_are_not(tiny_data_dir):
    old = json.loads(_config(tiny_data_dir).to_json_best_effort())
    new = _config(tiny_data_dir, **{"optimizer.grad_clip_norm": 0.0, "optimizer.ema_decay": 0.9,
                                    "optimizer.learning_rate": 1e-2, "num_steps": 8, "data.crop_size": 16})
    assert workdir.structural_keys(old, new, train.state_signature) == [
        "data.crop_size", "optimizer.ema_decay", "optimizer.grad_clip_norm"]


def test_a_mismatching_checkpoint_is_a_config_error_not_corruption(tiny_data_dir, run):
    (run / "config.json").unlink()  # no config.json to compare: the checkpoint's own tree decides
    trainer = train.make_trainer(_config(tiny_data_dir, **{"model.projector_dims": (16, 16)}), parallel.make_mesh())
    with pytest.raises(checkpoint.CheckpointMismatchError, match=r"projector/hidden/0/kernel: saved \(32, 32\)"):
        checkpoint.Checkpointer(run / "checkpoints").restore_latest(train.abstract_state(trainer), None)
    assert _steps(run) == ["2", "4"]


def test_changed_num_steps_warns_and_resumes(tiny_data_dir, run, caplog):
    with caplog.at_level(logging.WARNING):
        state = train.train(_config(tiny_data_dir, num_steps=6), run)
    assert int(state["step"]) == 6
    assert "num_steps: 4 → 6" in caplog.text


def test_resume_false_moves_the_old_run_aside(tiny_data_dir, run):
    old = runs.load_run(run)
    train.train(_config(tiny_data_dir, resume=False, num_steps=3, **{"model.projector_dims": (16, 16)}), run)
    (previous,) = [p for p in run.iterdir() if p.name.startswith(workdir.PREVIOUS)]
    assert _steps(previous) == ["2", "4"] and (previous / "metrics.jsonl").exists()
    kept = runs.load_run(previous)  # the old run is whole and loadable
    assert kept.step == 4
    for a, b in zip(jax.tree.leaves(kept.params), jax.tree.leaves(old.params), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _steps(run) == ["2", "3"] and tuple(runs.load_run(run).config.model.projector_dims) == (16, 16)


def _write_lock(path, **record):
    record = {"host": socket.gethostname(), "started": time.time(), "heartbeat": time.time(), **record}
    (path / workdir.LOCK).write_text(json.dumps(record))


def test_second_live_run_is_refused_naming_the_holder(tiny_data_dir, tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        _write_lock(tmp_path, pid=holder.pid)
        with pytest.raises(workdir.WorkdirError, match=rf"in use by another training run \(host .*, pid {holder.pid},"):
            train.train(_config(tiny_data_dir), tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "checkpoints").exists()
    with workdir.WorkdirLock(tmp_path):  # and a holder alive in this process (the flock itself)
        with pytest.raises(workdir.WorkdirError, match=f"pid {os.getpid()}"):
            workdir.WorkdirLock(tmp_path).acquire()


def test_stale_lock_is_taken_over(tiny_data_dir, tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path, pid=gone.pid)
    with caplog.at_level(logging.WARNING):
        state = train.train(_config(tiny_data_dir, num_steps=3), tmp_path)
    assert int(state["step"]) == 3 and "taking over the stale lock" in caplog.text
    assert not (tmp_path / workdir.LOCK).exists()
    other = {"host": "another-host", "pid": 1, "started": 0.0}
    assert workdir.holder_alive({**other, "heartbeat": time.time()})
    assert not workdir.holder_alive({**other, "heartbeat": time.time() - workdir.STALE_AFTER_SEC - 1})


def test_diverged_run_is_not_checkpointed_and_a_lower_rate_resumes_from_the_last_good_step(tiny_data_dir, tmp_path):
    diverging = _config(tiny_data_dir, num_steps=6, **{"optimizer.learning_rate": 1e4, "checkpoint.every_steps": 1})
    with pytest.raises(train.DivergedError) as err:
        train.train(diverging, tmp_path)
    message = str(err.value)
    assert message.startswith("step 2: the weights diverged (max |weight| = ")
    assert "step 1, is the last good state" in message and "--config.resume=True" in message and "\n" not in message
    assert _steps(tmp_path) == ["1"]  # step 1 (warm-up starts at 0) was good; step 2 was never saved
    sane = _config(tiny_data_dir, num_steps=6, **{"checkpoint.every_steps": 1})
    train.train(sane, tmp_path)
    assert _steps(tmp_path)[-1] == "6"
    for step in (4, 5, 6):
        params = jax.tree.leaves(runs.load_run(tmp_path, step=step).params)
        assert all(np.isfinite(p).all() for p in params) and max(np.abs(p).max() for p in params) < 10


def test_orbax_temporaries_are_moved_aside_and_steps_kept(tiny_data_dir, run):
    top = run / "checkpoints" / "6.orbax-checkpoint-tmp-1234"
    inner = run / "checkpoints" / "4" / "state.orbax-checkpoint-tmp-99"
    for path in (top, inner):
        path.mkdir()
        (path / "half_written").write_bytes(b"x")
    manager = checkpoint.Checkpointer(run / "checkpoints")
    trainer = train.make_trainer(_config(tiny_data_dir), parallel.make_mesh())
    step, _, _ = manager.restore_latest(train.abstract_state(trainer), None)
    manager.close()
    assert step == 4 and not top.exists() and not inner.exists()
    (aside,) = (run / "checkpoints" / checkpoint.LEFTOVERS).iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["4__state.orbax-checkpoint-tmp-99", "6.orbax-checkpoint-tmp-1234"]
    assert _steps(run) == ["2", "4", checkpoint.LEFTOVERS]


def test_compilation_cache_dir_resolves_under_the_workdir_and_yields_to_the_environment(tmp_path):
    from lmc_jax.modes import compilation_cache_dir

    assert compilation_cache_dir("compilation_cache", tmp_path, {}) == str(tmp_path / "compilation_cache")
    assert compilation_cache_dir("/shared/xla", tmp_path, {}) == "/shared/xla"
    assert compilation_cache_dir("gs://bucket/xla", tmp_path, {}) == "gs://bucket/xla"
    assert compilation_cache_dir("", tmp_path, {}) == ""
    assert compilation_cache_dir("compilation_cache", tmp_path, {"JAX_COMPILATION_CACHE_DIR": "/env"}) == "/env"


def test_a_changed_compilation_cache_dir_does_not_count_as_a_config_change(tmp_path):
    config = _config(tmp_path)
    (tmp_path / workdir.CONFIG).write_text(json.dumps(config.to_dict()))
    config.compilation_cache_dir = "/elsewhere"
    assert workdir.differing_keys(json.loads((tmp_path / workdir.CONFIG).read_text()), config) == []


def test_move_aside_keeps_the_compilation_cache_in_use(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "compilation_cache").mkdir()
    (tmp_path / "compilation_cache" / "entry").write_text("x")
    target = workdir.move_aside(tmp_path, keep=("compilation_cache",))
    assert (target / "checkpoints").is_dir() and not (target / "compilation_cache").exists()
    assert (tmp_path / "compilation_cache" / "entry").read_text() == "x"
