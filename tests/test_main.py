"""The entry point: config.mode picks a module of lmc_jax.modes; a user error is one line, nothing is created."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _main(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmc_jax.main", *args], cwd=ROOT, capture_output=True, text=True)


def test_unknown_mode_and_missing_run_are_one_line_each(tmp_path):
    unknown = _main("--config", "configs/default.py", "--config.mode=fit", "--workdir", str(tmp_path / "w"))
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert unknown.stderr.strip().splitlines()[-1].startswith("error: config.mode='fit': choose one of")
    missing = tmp_path / "nowhere"
    result = _main("--config", "configs/evaluate.py", f"--config.eval.checkpoint={missing}",
                   "--workdir", str(tmp_path / "out"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {missing}/config.json does not exist: expected the workdir of a training run (or its "
        "checkpoints/ folder); `python -m lmc_jax.main` writes config.json beside checkpoints/.")
    assert not missing.exists()
