"""Two local processes × 4 fake CPU devices (jax.distributed on localhost): == one process × 8 devices, and
preempted together."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multiprocess_check.py")
PREEMPTION_SCRIPT = os.path.join(ROOT, "tests", "multiprocess_preemption_check.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _logged_steps(workdir) -> int:
    """How many steps process 0 has logged to metrics.jsonl so far."""
    path = workdir / "metrics.jsonl"
    return len([json.loads(line) for line in path.read_text().splitlines() if line.strip()]) if path.exists() else 0


def _launch(num_processes: int, data_dir, tmp_path) -> list[dict]:
    port = _free_port()
    outs = [tmp_path / f"p{num_processes}_{i}.npz" for i in range(num_processes)]
    procs = [
        subprocess.Popen([sys.executable, SCRIPT, str(i), str(num_processes), str(port), str(data_dir), str(out)],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        for i, out in enumerate(outs)
    ]
    try:
        codes = [proc.wait(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert codes == [0] * num_processes
    return [dict(np.load(out)) for out in outs]


def test_two_processes_match_one_process_and_read_disjoint_data(tiny_data_dir, tmp_path):
    (single,) = _launch(1, tiny_data_dir, tmp_path)
    first, second = _launch(2, tiny_data_dir, tmp_path)
    np.testing.assert_allclose(first["losses"], single["losses"], rtol=1e-5)
    np.testing.assert_allclose(second["losses"], single["losses"], rtol=1e-5)
    assert not set(first["tile_ids"]) & set(second["tile_ids"])
    assert len(first["tile_ids"]) == len(second["tile_ids"]) == 3 * 8  # each reads half of each global batch


def test_sigterm_to_one_host_stops_every_host_at_one_checkpointed_step(tiny_data_dir, tmp_path):
    """The coordination service spreads one host's SIGTERM: both hosts save the same step and exit 143."""
    port, workdir = _free_port(), tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, PREEMPTION_SCRIPT, str(i), "2", str(port), str(tiny_data_dir),
                               str(workdir)], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        deadline = time.monotonic() + 240
        while not _logged_steps(workdir) >= 3:  # training runs on both hosts
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.2)
        procs[1].send_signal(signal.SIGTERM)  # only host 1 is told
        outs = [p.communicate(timeout=120)[0] for p in procs]
    finally:
        for proc in procs:
            proc.kill()
    assert [p.returncode for p in procs] == [143, 143], outs
    steps = {int(out.split("preempted at ")[1]) for out in outs}
    assert len(steps) == 1, outs  # one agreed step
    saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert saved[-1] == steps.pop()
