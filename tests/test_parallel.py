"""Mesh, FSDP rules, and the global-batch promise: 1 device == 8 devices == data2×fsdp4 (loss AND gradients)."""

import os
import subprocess
import sys

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from lmc_jax import parallel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fsdp_spec_shards_largest_divisible_dimension():
    assert parallel.fsdp_spec((64, 256), 4, min_size=16) == P(None, "fsdp")
    assert parallel.fsdp_spec((6, 8), 4, min_size=16) == P(None, "fsdp")
    assert parallel.fsdp_spec((6, 5), 4, min_size=16) == P()  # nothing divisible
    assert parallel.fsdp_spec((64, 256), 4, min_size=10**6) == P()  # too small to bother
    assert parallel.fsdp_spec((64, 256), 1, min_size=16) == P()


def test_make_mesh_rejects_impossible_shape():
    with pytest.raises(ValueError, match="must equal"):
        parallel.make_mesh(3, 1)


def _run(layout: str, tmp_path) -> dict:
    out = tmp_path / f"{layout}.npz"
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, os.path.join(ROOT, "tests", "multidevice_check.py"), layout, str(out)],
                   check=True, env=env, cwd=ROOT, timeout=600)
    return dict(np.load(out))


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("layouts")
    return {name: _run(name, tmp) for name in ("single", "data8", "data2_fsdp4")}


@pytest.mark.parametrize("layout", ["data8", "data2_fsdp4"])
def test_losses_gradients_and_params_match_one_device(layouts, layout):
    single, other = layouts["single"], layouts[layout]
    np.testing.assert_allclose(other["losses"], single["losses"], rtol=1e-5)
    grad_keys = [k for k in single if k.startswith("grad")]
    assert grad_keys
    # Relative to the whole gradient's scale: some leaves (the final norm's bias, whose shift the
    # projector's batch norm removes) have a true gradient of 0 and only float noise.
    scale = max(np.abs(single[k]).max() for k in grad_keys)
    for key in grad_keys:
        assert np.abs(other[key] - single[key]).max() / scale < 1e-5, key
    diff = np.sqrt(sum(np.sum((other[k] - single[k]) ** 2) for k in grad_keys))
    norm = np.sqrt(sum(np.sum(single[k] ** 2) for k in grad_keys))
    assert diff / norm < 1e-5
    # Parameters are not compared leaf by leaf: where the true gradient is 0 (the key bias under
    # softmax), Adam divides float noise by its own root-mean-square and turns it into lr-sized steps.


def test_fsdp_layout_really_shards_parameters(layouts):
    assert int(layouts["single"]["sharded"]) == 0
    assert int(layouts["data8"]["sharded"]) == 0
    assert int(layouts["data2_fsdp4"]["sharded"]) > 0
