"""End to end on a tiny crop: train LMC + the geometric reference, evaluate all encoders, write the report."""

import json

import pytest

from lmc_jax import experiment
from lmc_jax.evaluate.pipeline import RAW_COLOUR
from tests.conftest import TINY_BUILDER
from tests.tiny_config import tiny_config


@pytest.fixture(scope="module")
def run(tiny_data_dir, tmp_path_factory):
    config = tiny_config()
    config.data.data_dir = str(tiny_data_dir)
    config.data.builder_config = TINY_BUILDER
    workdir = tmp_path_factory.mktemp("e2e")
    return workdir, experiment.train_and_evaluate(config, workdir), config


def test_every_method_is_evaluated_at_every_site(run):
    workdir, metrics, _ = run
    assert set(metrics["methods"]) == {"lmc", "untrained", "geometric_only", RAW_COLOUR, "reinhard+geometric_only"}
    for method in metrics["methods"].values():
        assert set(method["per_site"]) == set(metrics["sites"])
        assert method["summary"]["mean_unseen_fd"] > 0
    assert (workdir / "references" / "geometric_only" / "checkpoints").is_dir()


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
    again = experiment.evaluate_workdir(config, workdir, tmp_path)
    for name, method in metrics["methods"].items():
        assert again["methods"][name]["summary"]["mean_unseen_fd"] == pytest.approx(
            method["summary"]["mean_unseen_fd"], rel=1e-4)
    assert (tmp_path / "eval" / "report.md").exists()
