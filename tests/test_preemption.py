"""Preemption through the real CLI: SIGTERM checkpoints and exits 143; SIGKILL mid-run resumes bit-identically."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lmc_jax import runs
from lmc_jax.main import PREEMPTED_EXIT_CODE
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _overrides(data_dir, num_steps: int, every: int) -> list[str]:
    config = tiny_config()
    pairs = {
        "data.data_dir": data_dir, "data.builder_config": TINY_BUILDER, "eval.at_end": False,
        "model.variant": config.model.variant, "model.projector_dims": "(32,32)", "data.tile_size": 32,
        "data.crop_size": 24, "batch_size": 16, "num_steps": num_steps, "optimizer.warmup_steps": 2,
        "checkpoint.every_steps": every, "log_every_steps": 1,
    }
    return [f"--config.{key}={value}" for key, value in pairs.items()]


def _start(workdir, overrides) -> subprocess.Popen:
    """The CLI in a subprocess; its log goes to a file (a pipe nobody reads would fill and block it)."""
    cmd = [sys.executable, "-m", "lmc_jax.main", "--config", "configs/default.py", "--workdir", str(workdir), *overrides]
    log = pathlib.Path(str(workdir) + ".log")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "a"))
    proc.log = log
    return proc


def _tail(proc) -> str:
    return proc.log.read_text()[-3000:]


def _wait_for(predicate, proc, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, _tail(proc)
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _logged_steps(workdir: pathlib.Path) -> list[int]:
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    import json
    return [json.loads(line)["step"] for line in path.read_text().splitlines() if line.strip()]


def _steps_on_disk(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def _read(path: pathlib.Path) -> str:
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _final_params(workdir) -> list[np.ndarray]:
    params = runs.load_run(workdir).params
    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(params))]


def test_sigterm_saves_the_current_step_and_resume_continues_from_it(tiny_data_dir, tmp_path):
    overrides = _overrides(tiny_data_dir, num_steps=100_000, every=100_000)
    proc = _start(tmp_path, overrides)
    _wait_for(lambda: len(_logged_steps(tmp_path)) >= 3, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == PREEMPTED_EXIT_CODE
    (saved,) = _steps_on_disk(tmp_path)
    assert saved >= 3
    logged = _logged_steps(tmp_path)
    assert logged[-1] == saved  # the step in progress was completed, then saved
    resumed = _start(tmp_path, _overrides(tiny_data_dir, num_steps=saved + 2, every=100_000))
    assert resumed.wait(timeout=240) == 0, _tail(resumed)
    assert _logged_steps(tmp_path)[len(logged):] == [saved + 1, saved + 2]


@pytest.fixture(scope="module")
def reference(tiny_data_dir, tmp_path_factory):
    """An uninterrupted 30-step run (the SIGKILL test's reference) and, launched on its workdir while it holds it,
    a second run that must be refused: (workdir, overrides, the first process, the second one's exit code). The
    first is stopped (SIGSTOP: alive, lock held) while the second runs, so a first run that finishes before the
    second reaches the lock cannot make the check pass or fail by chance; it then continues (SIGCONT)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    overrides = _overrides(tiny_data_dir, num_steps=30, every=5)
    first = _start(workdir, overrides)
    _wait_for(lambda: f'"pid": {first.pid},' in _read(workdir / "lock.json"), first)  # flocked and written
    first.send_signal(signal.SIGSTOP)
    try:
        second = _start(workdir, overrides)
        refused = second.wait(timeout=240)
    finally:
        first.send_signal(signal.SIGCONT)
    assert first.wait(timeout=300) == 0, _tail(first)
    return workdir, overrides, first, refused


def test_sigkill_mid_run_then_restart_is_bit_identical(reference, tmp_path):
    reference_dir, overrides, _, _ = reference
    killed = _start(tmp_path / "killed", overrides)
    _wait_for(lambda: max(_steps_on_disk(tmp_path / "killed"), default=0) >= 10, killed)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert max(_steps_on_disk(tmp_path / "killed")) < 30
    restarted = _start(tmp_path / "killed", overrides)
    assert restarted.wait(timeout=300) == 0, _tail(restarted)
    for got, want in zip(_final_params(tmp_path / "killed"), _final_params(reference_dir), strict=True):
        np.testing.assert_array_equal(got, want)
    assert _logged_steps(tmp_path / "killed") == _logged_steps(reference_dir) == list(range(1, 31))


def test_a_second_run_on_a_held_workdir_is_refused_in_one_line(reference):
    """The second run launched on the reference's workdir while it trained (the fixture) exited 1 in one line."""
    workdir, _, first, refused = reference
    assert refused == 1
    errors = [line for line in first.log.read_text().splitlines() if line.startswith("error:")]  # one shared log
    assert len(errors) == 1 and f"--workdir {workdir} is in use by another training run" in errors[0]
    assert f"pid {first.pid}" in errors[0]
    assert _logged_steps(workdir) == list(range(1, 31))  # each step once: the refused run wrote none
    assert not list(workdir.rglob("*orbax-checkpoint-tmp*"))


def test_several_hosts_ask_the_coordination_service_not_a_collective(monkeypatch):
    """Multi-host: `requested(step)` is the sync point's answer for that step; no per-step allgather runs."""
    from jax.experimental import multihost_utils

    from lmc_jax import preemption

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption, "_sync_manager_ready", lambda: True)
    monkeypatch.setattr(multihost_utils, "process_allgather", lambda *a, **k: (_ for _ in ()).throw(AssertionError))
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", lambda step: step == 7)
    watch = preemption.PreemptionWatch()
    try:
        assert signal.getsignal(signal.SIGTERM) != watch._handle  # the coordination service keeps SIGTERM
        assert [watch.requested(step) for step in (5, 6, 7)] == [False, False, True]
    finally:
        watch.close()


def test_several_hosts_without_the_preemption_service_are_refused_in_one_line(monkeypatch):
    from lmc_jax import preemption
    from lmc_jax.errors import UserError

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(preemption, "_sync_manager_ready", lambda: False)
    with pytest.raises(UserError, match="jax_enable_preemption_service") as error:
        preemption.PreemptionWatch()
    assert "\n" not in str(error.value)
