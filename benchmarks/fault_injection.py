"""Fault injection on the tiny config: does a training run survive kills, broken files, races and config changes?

    .venv/bin/python benchmarks/fault_injection.py --rounds 5

In a temporary directory: builds the tiny embedded data set (32-px tiles), trains one uninterrupted reference run
through the real CLI (`python -m lmc_jax.main --config configs/default.py`, ViT mu/8, 20 steps, a checkpoint
every 4 steps, all kept), then per round a fresh workdir gets one fault, cycling through
  sigkill   SIGKILL mid-run, then rerun;
  truncate  SIGKILL mid-run, truncate the largest file of the newest checkpoint, then rerun;
  race      a second identical run started while the first holds the workdir (it must be refused);
  config    SIGKILL mid-run, rerun with another model.projector_dims (it must be refused, nothing renamed),
            then rerun the original command;
and every round reruns the original command to completion. Prints one table: runs started, faults injected,
checkpoints lost (good steps that disappeared; must be 0) and whether the final parameters equal the
uninterrupted run's bit for bit (`lmc_jax.runs.load_run(...).params`; must be all). About 1 minute a round on
2 CPU cores. Exit status 1 when a checkpoint was lost or a run's parameters differ. "steps logged twice": after a
kill, the steps between the last checkpoint and the kill are recomputed (identically) and logged again, since
metrics.jsonl is appended to; a refused second run logs nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

BUILDER = "crop32"
NUM_STEPS, EVERY = 20, 4
FAULTS = ("sigkill", "truncate", "race", "config")


def _overrides(data_dir: pathlib.Path, **changes) -> list[str]:
    pairs = {
        "data.data_dir": data_dir, "data.builder_config": BUILDER, "eval.at_end": False, "model.variant": "mu/8",
        "model.projector_dims": "(32,32)", "data.tile_size": 32, "data.crop_size": 24, "batch_size": 16,
        "num_steps": NUM_STEPS, "optimizer.warmup_steps": 2, "checkpoint.every_steps": EVERY,
        "checkpoint.max_to_keep": 1000, "log_every_steps": 1, **changes,
    }
    return [f"--config.{key}={value}" for key, value in pairs.items()]


class Runs:
    """Starts CLI runs (each logged to <workdir>.log) and counts them."""

    def __init__(self) -> None:
        self.started = 0

    def start(self, workdir: pathlib.Path, overrides: list[str]) -> subprocess.Popen:
        self.started += 1
        cmd = [sys.executable, "-m", "lmc_jax.main", "--config", "configs/default.py", "--workdir", str(workdir),
               *overrides]
        log = open(f"{workdir}.log", "a")
        return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log)

    def finish(self, workdir: pathlib.Path, overrides: list[str], timeout: float = 900) -> int:
        return self.start(workdir, overrides).wait(timeout=timeout)


def _steps(workdir: pathlib.Path) -> list[int]:
    directory = workdir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"run ended (rc {proc.returncode}) or timed out before the fault could be injected")
        time.sleep(0.05)


def _kill_after_checkpoint(runs: Runs, workdir: pathlib.Path, overrides: list[str], step: int) -> None:
    proc = runs.start(workdir, overrides)
    _wait_for(lambda: max(_steps(workdir), default=0) >= step, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _last_line(workdir: pathlib.Path) -> str:
    lines = [line for line in pathlib.Path(f"{workdir}.log").read_text().splitlines() if line.startswith("error:")]
    return lines[-1] if lines else ""


def _params(workdir: pathlib.Path):
    import jax
    import numpy as np

    from lmc_jax import runs

    return [np.asarray(leaf) for leaf in jax.tree.leaves(jax.device_get(runs.load_run(workdir).params))]


def _inject(fault: str, runs: Runs, workdir: pathlib.Path, data_dir: pathlib.Path) -> tuple[set[int], str]:
    """Injects `fault`; returns (the good steps on disk afterwards, a note on what the runs said)."""
    overrides = _overrides(data_dir)
    if fault == "race":
        first = runs.start(workdir, overrides)
        _wait_for(lambda: (workdir / "lock.json").exists() and (workdir / "metrics.jsonl").exists(), first)
        second = runs.finish(workdir, overrides)
        note = f"second run rc {second}: {_last_line(workdir)[:90]}"
        first.wait(timeout=900)
        return set(_steps(workdir)), note
    _kill_after_checkpoint(runs, workdir, overrides, step=2 * EVERY)
    good = set(_steps(workdir))
    note = f"killed after step {max(good)}"
    if fault == "truncate":
        newest = workdir / "checkpoints" / str(max(good))
        victim = max((p for p in (newest / "state").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
        victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        good.discard(max(good))
        note += f", truncated {victim.relative_to(workdir)}"
    elif fault == "config":
        before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
        rc = runs.finish(workdir, _overrides(data_dir, **{"model.projector_dims": "(16,16)"}))
        after = sorted(p.name for p in (workdir / "checkpoints").iterdir())
        note += f"; changed config rc {rc}, {'nothing renamed' if before == after else 'CHECKPOINTS CHANGED'}"
    return good, note


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="faults to inject (cycling through the kinds)")
    parser.add_argument("--keep", default="", help="keep the runs in this folder instead of a temporary one")
    args = parser.parse_args()
    import numpy as np

    from data_pipelines.builders.cmu_small_region import CmuSmallRegionConfig, build_dataset

    root = pathlib.Path(args.keep or tempfile.mkdtemp(prefix="fault_injection_"))
    root.mkdir(parents=True, exist_ok=True)
    data_dir = root / "tfds"
    build_dataset(data_dir, config=CmuSmallRegionConfig(name=BUILDER, tile_size=32, train_stride=16, region_size=128,
                                                        crop=(1280, 640, 384, 512)))
    runs = Runs()
    reference = root / "reference"
    if runs.finish(reference, _overrides(data_dir)) != 0:
        raise SystemExit(f"the reference run failed; see {reference}.log")
    want = _params(reference)
    rows, lost_total, identical_total = [], 0, 0
    for index in range(args.rounds):
        fault = FAULTS[index % len(FAULTS)]
        workdir = root / f"round{index}-{fault}"
        started = runs.started
        good, note = _inject(fault, runs, workdir, data_dir)
        rc = runs.finish(workdir, _overrides(data_dir)) if max(_steps(workdir), default=0) < NUM_STEPS else 0
        lost = len(good - set(_steps(workdir)))
        logged = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
        identical = rc == 0 and all(np.array_equal(a, b) for a, b in zip(_params(workdir), want, strict=True))
        lost_total += lost
        identical_total += identical
        rows.append((index, fault, runs.started - started, rc, lost, identical,
                     len(logged) - len(set(logged)), note))
    print(f"\nfault injection, tiny config ({NUM_STEPS} steps, checkpoint every {EVERY}), runs in {root}\n")
    print("| round | fault | runs started | final rc | checkpoints lost | params identical | steps logged "
          "twice | what happened |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"\nruns started: {runs.started} (reference included); faults injected: {args.rounds}; "
          f"checkpoints lost: {lost_total}; final parameters identical to the uninterrupted run: "
          f"{identical_total}/{args.rounds}")
    return 0 if lost_total == 0 and identical_total == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
