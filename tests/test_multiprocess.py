"""Two local processes × 4 fake CPU devices (jax.distributed on localhost) == one process × 8 devices."""

import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "multiprocess_check.py")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
