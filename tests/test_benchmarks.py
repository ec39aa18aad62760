"""The benchmark scripts run: benchmarks/accelerator.py --tiny on the CPU (every section, one JSON + markdown),
benchmarks/input_pipeline.py's shard writing and reading, and benchmarks/config_runtime.py --tiny (every config's
bill)."""

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


def test_config_runtime_tiny_bills_every_config(tmp_path):
    bench = _load("config_runtime")
    result = bench.main(["--tiny", "--out", str(tmp_path)])
    assert json.loads((tmp_path / "config_runtime.json").read_text())["configs"].keys() == set(bench.CONFIGS)
    table = (tmp_path / "config_runtime.md").read_text()
    (h200, h200_peak), (v4, v4_peak) = bench.HARDWARE.items()
    for name, bill in result["configs"].items():
        assert f"| {name} | ViT-mu/8 |" in table
        assert all(item["count"] > 0 and item["flops_each"] > 0 for item in bill["items"]), name
        assert bill["train_flops"] > 0 and bill["eval_flops"] > 0
        assert bill["total_flops"] == pytest.approx(sum(item["flops"] for item in bill["items"]))
        slow, fast = (bill["hours"][h200][f"{u:.0%}"] for u in bench.UTILISATIONS)
        assert slow * bench.UTILISATIONS[0] == pytest.approx(fast * bench.UTILISATIONS[1])
        assert bill["hours"][v4]["40%"] == pytest.approx(fast * h200_peak / v4_peak)
        assert fast * 3600 * 0.4 * h200_peak == pytest.approx(bill["total_flops"])
    # the costed programs agree with each other: an LMC step (K=2 views of batch_size tiles, forward + backward)
    # costs 2-5 forwards per view of the evaluation encoder, and twice the views of the supervised K=1 step
    lomo = {item["what"].split(":")[0]: item for item in result["configs"]["breakhis_lomo"]["items"]}
    forward = lomo["lmc selection"]["flops_each"]
    views = 2 * bench.TINY["batch_size"]
    assert 2 < lomo["lmc"]["flops_each"] / (views * forward) < 5
    assert 1.5 < lomo["lmc"]["flops_each"] / lomo["baseline"]["flops_each"] < 2.5


def test_evaluate_benchmark_generators_and_per_family_settings():
    bench = _load("evaluate")
    for name, generate in bench.GENERATORS.items():
        m = generate(1000, 32, patients=50)
        assert m.heldout.shape == (1000, 32) and m.train.shape == (200, 32), name
        assert np.bincount(m.heldout_sites).tolist() == [200] * 5 and set(np.unique(m.heldout_labels)) == {0, 1}
        assert not set(m.train_groups) & set(m.heldout_groups) and len(np.unique(m.heldout_groups)) <= 50
    settings = bench.DEFAULTS.replace(bootstrap_replicates=0)
    others = tuple(f.name for f in bench.families.FAMILIES if f.name != "mixing")
    m = bench.synthetic(500, 16, patients=25)
    meter = bench.Meter()
    changed = bench.suite_run(m, settings, meter, skip=others, family_settings={"mixing": {"integration_max_samples": 100}})
    assert changed["mixing"]["n"] == 100 and "mixing" in meter.rows and len(meter.rows) == 2  # + shared inputs
    assert bench.suite_run(m, settings, bench.Meter(), skip=others)["mixing"]["n"] == 500  # the default: every row
