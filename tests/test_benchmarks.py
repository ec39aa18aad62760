"""The benchmark scripts run: benchmarks/accelerator.py --tiny on the CPU (every section, one JSON + markdown), and
benchmarks/input_pipeline.py's shard writing and reading."""

import importlib.util
import json
import pathlib
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_accelerator_tiny_runs_every_section(tmp_path):
    accelerator = _load("accelerator")
    result = accelerator.main(["--tiny", "--out", str(tmp_path), "--budget-s", "900"])
    assert json.loads((tmp_path / "accelerator.json").read_text())["sections"].keys() == accelerator.SECTIONS.keys()
    for name, section in result["sections"].items():
        assert "error" not in section and "skipped" not in section, (name, section)
    step = result["sections"]["train"]["mu/8"]
    assert step["tiles_per_s"] > 0 and step["flops_per_step"] > 0 and step["mfu"] is None  # no peak known for a CPU
    attention = result["sections"]["attention"]["mu/8"]
    assert attention["ours (vit.py einsums)"]["ms_fwd_bwd"] > 0 and "ms_fwd_bwd" in attention["dot_product_attention(xla)"]
    assert result["sections"]["headroom"]["mu/8"] == {"largest_batch_tiles": 8, "stopped_by": "limit"}
    assert {"macenko 32²", "reinhard 32²"} <= result["sections"]["stain"].keys()
    assert result["sections"]["evaluate"]["rows"] == 1000
    table = (tmp_path / "accelerator.md").read_text()
    assert "| train | mu/8 | tiles_per_s |" in table


@pytest.mark.parametrize("encoding", ["raw", "jpeg"])
def test_input_pipeline_benchmark_reads_back_the_shards_it_writes(tmp_path, encoding):
    bench = _load("input_pipeline")
    tiles = bench.slide_tiles(32, 70)
    path = tmp_path / "shard.array_record"
    assert bench.write_shard(path, tiles, encoding) > 0
    source = bench.ShardSource(path, 32, encoding)
    assert len(source) == 70
    image = source[3]["image"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    if encoding == "raw":
        np.testing.assert_array_equal(image, tiles[3])
    rate, per_core = bench.pipeline_rate(source, workers=0, batches=1, repeats=1)
    assert rate > 0 and per_core > 0
