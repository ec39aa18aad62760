"""mode=export: a run's checkpoint (latest or chosen step) → timm export with its config.json, parity-checked."""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np
import pytest

from lmc_jax import parallel, train
from lmc_jax.checkpoint import CheckpointError, Checkpointer
from lmc_jax.modes import export as cli
from lmc_jax.export.load import read_state_dict
from lmc_jax.export.timm import to_timm
from tests.tiny_config import tiny_config

_EXPORT_CONFIG = pathlib.Path(__file__).parents[1] / "configs" / "export.py"


def _require_timm() -> None:
    from lmc_jax.export.torch_compat import import_timm

    try:
        import_timm()
    except ImportError as error:
        pytest.skip(f"torch/timm not installed (the export extra): {error}")


def _export_config(checkpoint: pathlib.Path, **overrides):
    spec = importlib.util.spec_from_file_location("export_config", _EXPORT_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    config.checkpoint = str(checkpoint)
    config.update(overrides)
    return config


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[pathlib.Path, dict]:
    """A tiny run's workdir with checkpoints at steps 2 and 4 (different params), as training leaves it."""
    workdir = tmp_path_factory.mktemp("run")
    config = tiny_config()
    trainer = train.make_trainer(config, parallel.make_mesh(1, 1, devices=jax.devices()[:1]))
    state = train.init_state(trainer)
    later = dict(state, params=jax.tree.map(lambda x: x * 1.5 + 0.01, state["params"]))
    checkpointer = Checkpointer(workdir / "checkpoints", async_save=False)
    params = {}
    for step, saved in ((2, state), (4, later)):
        checkpointer.save(step, saved, None, {"step": step})
        params[step] = jax.device_get(saved["params"])
    checkpointer.close()
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    return workdir, params


@pytest.mark.parametrize("step,expected", [(-1, 4), (2, 2)])
def test_exports_the_requested_step(run_dir, tmp_path, step, expected):
    workdir, params = run_dir
    result = cli.run(_export_config(workdir, step=step, output=str(tmp_path / "out"), verify=False), None)
    assert result["step"] == expected
    exported = read_state_dict(tmp_path / "out" / "model.safetensors")
    want = to_timm(params[expected]["encoder"])
    assert exported.keys() == want.keys()
    for key, value in want.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_args"] == dict(img_size=24, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
    assert config["lmc_jax"]["step"] == expected and config["pretrained_cfg"]["input_size"] == [3, 24, 24]
    assert not (tmp_path / "out" / "projector.safetensors").exists()


def test_projector_and_parity_check(run_dir, tmp_path):
    _require_timm()
    workdir, params = run_dir
    result = cli.run(_export_config(workdir, include_projector=True), tmp_path)
    assert result["output"] == str(tmp_path / "export")
    assert 0 <= result["parity"]["max_abs_diff"] <= 1e-4
    projector = read_state_dict(tmp_path / "export" / "projector.safetensors")
    np.testing.assert_array_equal(projector["projector.hidden.0.weight"],
                                  np.asarray(params[4]["projector"]["hidden"][0]["kernel"]).T)
    assert sorted(projector) == ["projector.hidden.0.weight", "projector.norms.0.bias", "projector.norms.0.weight",
                                 "projector.out.weight"]


def test_failed_parity_leaves_nothing(run_dir, tmp_path):
    _require_timm()
    workdir, _ = run_dir
    with pytest.raises(cli.ExportError, match="nothing was written"):
        cli.run(_export_config(workdir, output=str(tmp_path / "out"), verify_tolerance=1e-30), None)
    assert os.listdir(tmp_path) == []


def test_missing_step_and_missing_run_are_named(run_dir, tmp_path):
    workdir, _ = run_dir
    with pytest.raises(CheckpointError, match=r"no checkpoint for step 3 .*\[2, 4\]"):
        cli.run(_export_config(workdir, step=3, output=str(tmp_path / "a"), verify=False), None)
    with pytest.raises(CheckpointError, match=r"nowhere/config.json does not exist"):
        cli.run(_export_config(tmp_path / "nowhere", output=str(tmp_path / "b")), None)
    assert not (tmp_path / "a").exists() and not (tmp_path / "nowhere").exists()


def test_validate_names_bad_values(tmp_path):
    cli.validate(_export_config(tmp_path))
    for overrides, key in ((dict(checkpoint=""), "checkpoint"), (dict(step=-2), "step"),
                           (dict(verify_images=0), "verify_images"), (dict(mode="train"), "mode")):
        config = _export_config(tmp_path)
        config.update(overrides)
        with pytest.raises(cli.ExportError, match=f"config.{key}="):
            cli.validate(config)
