"""`mode=train`: builds the embedded data if needed, trains LMC in the workdir, then (config.eval.at_end) the
trained references under references/<name>/, and evaluates them all into eval/.

Layout of a workdir: `checkpoints/`, `tensorboard/`, `metrics.jsonl`, `config.json`,
`references/<name>/` (same layout), `eval/` (metrics.json, report.md, report.html, figures).
"""

from __future__ import annotations

import logging

import ml_collections
from etils import epath

from data_pipelines import input_pipeline
from lmc_jax import configlib, methods, modes, train
from lmc_jax.modes.evaluate import evaluate_run


validate = configlib.validate  # the shared run-config checks


def run(config: ml_collections.ConfigDict, workdir: epath.Path | None) -> dict:
    """Trains and (config.eval.at_end) evaluates; returns the metrics ({} without the evaluation)."""
    mesh = modes.start(config, workdir, "checkpoints, logs and the report go there")
    input_pipeline.ensure_built(config)
    train.train(config, workdir, mesh)
    if not config.eval.at_end:
        return {}
    for name in methods.trained_references(config):
        logging.info("training reference %r", name)
        train.train(methods.training_config(config, name), methods.workdir_of(workdir, name), mesh)
    return evaluate_run(config, workdir, workdir / "eval", mesh)
