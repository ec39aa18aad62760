"""`mode=evaluate`: the methods table of a trained run on a data set's held-out sites → WORKDIR/eval.

Every model is rebuilt from its own run's config.json (`lmc_jax.runs.load_run`); the command line's
config gives only the data, the evaluation knobs and the mesh. Writes metrics.json, report.md,
report.html and the figures; prints the summary table.
"""

from __future__ import annotations

import logging

import jax
import ml_collections
from etils import epath

from lmc_jax import configlib, methods, modes, runs
from lmc_jax.evaluate import pipeline, report
from lmc_jax.stain.normalizers import fit_normalizers


validate = configlib.validate  # the shared run-config checks (config.eval.checkpoint among them)


def evaluate_run(config: ml_collections.ConfigDict, run_dir: epath.PathLike, out_dir: epath.Path,
                 mesh: jax.sharding.Mesh) -> dict:
    """The run at `run_dir` (its lmc encoder, references, extra encoders, normalisers in front) → `out_dir`."""
    run = runs.load_run(run_dir, use_ema=config.eval.use_ema, mesh=mesh)
    logging.info("evaluating %s at step %d (%s weights)", run.directory, run.step, run.weights)
    features, provenance = methods.table_features(config, run, mesh)
    data = pipeline.load_eval_data(config)
    if config.eval.normalizers:
        reference = data.source_train_images()[: config.eval.normalizer_fit_tiles]
        features = methods.with_transforms(
            features, fit_normalizers(tuple(config.eval.normalizers), reference),
            [name for name in config.eval.normalizer_encoders if name in features])
    metrics, paths = pipeline.evaluate_features(config, features, out_dir, data=data, provenance=provenance)
    if jax.process_index() == 0:
        print(report.format_table(metrics))
        for kind, path in paths.items():
            print(f"{kind}: {path}")
    return metrics


def run(config: ml_collections.ConfigDict, workdir: epath.Path | None) -> dict:
    """Evaluates config.eval.checkpoint into `workdir`/eval."""
    mesh = modes.start(config, workdir, "the report goes to <workdir>/eval")
    return evaluate_run(config, config.eval.checkpoint, workdir / "eval", mesh)
