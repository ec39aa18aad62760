"""End to end on a tiny crop: train mode trains LMC + the references and evaluates every method; evaluate mode
reproduces it; extra encoders are further rows."""

import json
import shutil

import ml_collections
import pytest

from configs.export import get_config as export_config
from lmc_jax import configlib
from lmc_jax.modes import evaluate as evaluate_mode
from lmc_jax.modes import export as export_mode
from lmc_jax.modes import train as train_mode
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
    config = tiny_config()
    config.data.data_dir = str(tiny_data_dir)
    config.data.builder_config = TINY_BUILDER
    workdir = tmp_path_factory.mktemp("e2e")
    return workdir, train_mode.run(config, workdir), config


def _evaluate(config: ml_collections.ConfigDict, run_dir, workdir) -> dict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.mode, config.eval.checkpoint = "evaluate", str(run_dir)
    evaluate_mode.validate(config)
    return evaluate_mode.run(config, workdir)


def test_every_method_is_evaluated_at_every_site(run):
    workdir, metrics, _ = run
    assert set(metrics["methods"]) == {"lmc", "untrained", "geometric_only", "dann", "raw_colour_stats",
                                       "reinhard+geometric_only"}
    for method in metrics["methods"].values():
        assert set(method["per_site"]) == set(metrics["sites"])
        assert method["summary"]["mean_unseen_fd"] > 0
    assert (workdir / "references" / "geometric_only" / "checkpoints").is_dir()
    assert (workdir / "references" / "dann" / "checkpoints").is_dir()
    assert metrics["encoders"]["lmc"] == {"run": str(workdir), "step": 6, "weights": "raw"}
    assert metrics["encoders"]["dann"]["run"] == str(workdir / "references" / "dann")


def test_report_files_are_written_and_consistent(run):
    workdir, metrics, _ = run
    on_disk = json.loads((workdir / "eval" / "metrics.json").read_text())
    assert on_disk["methods"].keys() == metrics["methods"].keys()
    report = (workdir / "eval" / "report.md").read_text()
    assert "lmc" in report and "geometric_only" in report
    assert (workdir / "eval" / "embeddings.png").stat().st_size > 10_000
    assert "ihc" in on_disk["summary_excludes"]


def test_evaluate_mode_reproduces_the_training_evaluation(run, tmp_path):
    workdir, metrics, config = run
    again = _evaluate(config, workdir / "checkpoints", tmp_path)  # the checkpoints/ folder names the run too
    for name, method in metrics["methods"].items():
        assert again["methods"][name]["summary"]["mean_unseen_fd"] == pytest.approx(
            method["summary"]["mean_unseen_fd"], rel=1e-4)
    assert (tmp_path / "eval" / "report.md").exists()


def test_extra_encoders_are_rows_of_the_table(run, tmp_path):
    """The run's own encoder, passed back in as timm weights (with and without timm's config.json) and as a
    workdir, gets exactly LMC's numbers under its own names."""
    workdir, metrics, config = run
    export = ml_collections.ConfigDict(dict(export_config().to_dict(), checkpoint=str(workdir),
                                            output=str(tmp_path / "timm"), verify=False))
    export_mode.run(export, None)
    bare = tmp_path / "bare" / "lmc_weights.safetensors"
    bare.parent.mkdir()
    shutil.copy(tmp_path / "timm" / "model.safetensors", bare)
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.extra_encoders = (f"exported=timm:{tmp_path / 'timm' / 'model.safetensors'}", f"timm:{bare}",
                                  f"again={workdir}")
    # only LMC beside them: the references and the normaliser rows are reproduced by the test above (every method
    # is resampled with the same key, whatever the others), so this run need not embed and score them again
    config.eval.references, config.eval.normalizers = (), ()
    configlib.validate(config)
    again = _evaluate(config, workdir, tmp_path / "out")
    assert set(again["methods"]) == {"lmc", "exported", "lmc_weights", "again"}
    expected = metrics["methods"]["lmc"]["summary"]
    for name in ("lmc", "exported", "lmc_weights", "again"):
        summary = again["methods"][name]["summary"]
        assert summary["mean_unseen_fd"] == pytest.approx(expected["mean_unseen_fd"], rel=1e-3)
        assert summary["mean_unseen_auc"] == pytest.approx(expected["mean_unseen_auc"], abs=1e-3)
    assert "exported" in (tmp_path / "out" / "eval" / "report.md").read_text()
