"""One way to load a run: its own config rebuilds the model; evaluation and export take the same weights."""

import json

import jax
import ml_collections
import numpy as np
import pytest

from configs.export import get_config as export_config
from lmc_jax import methods, runs, train
from lmc_jax.checkpoint import CheckpointError
from lmc_jax.export.load import read_state_dict
from lmc_jax.export.timm import to_timm
from lmc_jax.modes import evaluate as evaluate_mode
from lmc_jax.modes import export as export_mode
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


def _data(config: ml_collections.ConfigDict, data_dir) -> ml_collections.ConfigDict:
    config.data.data_dir, config.data.builder_config = str(data_dir), TINY_BUILDER
    return config


@pytest.fixture(scope="module")
def ema_run(tiny_data_dir, tmp_path_factory):
    """A tiny run with an EMA of its weights and model keys the default config does not have."""
    config = _data(tiny_config(), tiny_data_dir)
    config.optimizer.ema_decay = 0.5
    config.model.pool, config.model.projector_dims, config.data.crop_size = "mean", (16, 24), 16
    config.eval.at_end = False
    workdir = tmp_path_factory.mktemp("ema_run")
    state = train.train(config, workdir)
    return workdir, config, jax.device_get(state)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


def test_load_run_rebuilds_the_model_from_the_run_and_takes_the_ema(ema_run):
    workdir, config, state = ema_run
    run = runs.load_run(workdir / "checkpoints")  # the checkpoints/ folder names the run too
    assert run.directory == workdir and run.step == config.num_steps and run.weights == "ema"
    assert run.config.model.pool == "mean" and run.crop_size == 16
    for got, want in zip(_leaves(run.params), _leaves(state["ema_params"]), strict=True):
        np.testing.assert_array_equal(got, want)
    raw = runs.load_run(workdir, use_ema=False)
    assert raw.weights == "raw"
    assert any(not np.array_equal(a, b) for a, b in zip(_leaves(raw.params), _leaves(run.params), strict=True))
    assert run.provenance() == {"run": str(workdir), "step": config.num_steps, "weights": "ema"}


def test_evaluate_and_export_take_the_same_arrays_with_no_model_keys(ema_run, tiny_data_dir, tmp_path, monkeypatch):
    workdir, config, state = ema_run
    scored = {}
    original = methods.run_features

    def spy(run, *args):
        scored[str(run.directory)] = jax.device_get(run.params["encoder"])
        return original(run, *args)

    monkeypatch.setattr(methods, "run_features", spy)
    evaluation = _data(tiny_config(), tiny_data_dir)  # default model keys: cls pool, 24-px crops
    evaluation.mode, evaluation.eval.checkpoint = "evaluate", str(workdir)
    evaluation.eval.references, evaluation.eval.normalizers = ("raw_colour_stats",), ()
    evaluation.eval.protocols, evaluation.eval.signature_folds = (), 0
    evaluate_mode.validate(evaluation)
    metrics = evaluate_mode.run(evaluation, tmp_path / "eval_out")
    assert metrics["encoders"]["lmc"] == {"run": str(workdir), "step": config.num_steps, "weights": "ema"}
    assert "ema" in (tmp_path / "eval_out" / "eval" / "report.md").read_text()
    export = ml_collections.ConfigDict(dict(export_config().to_dict(), checkpoint=str(workdir),
                                            output=str(tmp_path / "timm"), verify=False))
    result = export_mode.run(export, None)
    assert result["weights"] == "ema" and result["step"] == config.num_steps
    hub = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert hub["lmc_jax"]["weights"] == "ema" and hub["lmc_jax"]["pool"] == "mean"
    exported = read_state_dict(tmp_path / "timm" / "model.safetensors")
    evaluated = to_timm(scored[str(workdir)])
    assert exported.keys() == evaluated.keys()
    for key, value in evaluated.items():
        np.testing.assert_array_equal(exported[key], value, err_msg=key)
    for got, want in zip(_leaves(scored[str(workdir)]), _leaves(state["ema_params"]["encoder"]), strict=True):
        np.testing.assert_array_equal(got, want)


def test_loading_never_creates_directories_in_what_it_reads(ema_run, tmp_path):
    _, config, _ = ema_run
    with pytest.raises(CheckpointError, match="config.json does not exist"):
        runs.load_run(tmp_path / "empty")
    assert not (tmp_path / "empty").exists()
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "config.json").write_text(config.to_json())
    with pytest.raises(CheckpointError, match="no checkpoints/"):
        runs.load_run(tmp_path / "untrained")
    assert [p.name for p in (tmp_path / "untrained").iterdir()] == ["config.json"]


def test_a_run_config_from_before_objectives_is_upgraded():
    old = tiny_config().to_dict()
    del old["objectives"]
    old["dann"]["enabled"] = True
    upgraded = runs.upgrade_config(ml_collections.ConfigDict(old))
    assert upgraded.objectives == ("cross_correlation", "dann") and "enabled" not in upgraded.dann
    older = tiny_config().to_dict()
    del older["objectives"]
    assert runs.upgrade_config(ml_collections.ConfigDict(older)).objectives == ("cross_correlation",)
