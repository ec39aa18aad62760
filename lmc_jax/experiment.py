"""One experiment end to end: train LMC and its references in one workdir, then evaluate them all.

Layout of a workdir: `checkpoints/`, `tensorboard/`, `metrics.jsonl`, `config.json`,
`references/<name>/` (same layout, for trained references), `eval/` (metrics.json, report.md,
embeddings.png).
"""

from __future__ import annotations

import logging

from etils import epath
import jax
import ml_collections

from data_pipelines import input_pipeline
from lmc_jax import parallel, train
from lmc_jax.evaluate import pipeline, report
from lmc_jax.evaluate.embed import make_encoder
from lmc_jax.evaluate.extra_encoders import LMC, load_encoder, parse_specs
from lmc_jax.evaluate.normalizers import fit_normalizers


TRAINED_REFERENCES = ("geometric_only", "dann")


def reference_config(config: ml_collections.ConfigDict, name: str) -> ml_collections.ConfigDict:
    """The config of a trained reference: same everything, geometric views only; "dann" adds the DANN domain head."""
    if name not in TRAINED_REFERENCES:
        raise ValueError(f"{name!r} is not a trained reference; choose one of {TRAINED_REFERENCES}")
    ref = ml_collections.ConfigDict(config.to_dict())
    ref.lmc.stain_views = False
    ref.dann.enabled = name == "dann"
    return ref


def _encoders(config: ml_collections.ConfigDict, workdir: epath.Path, mesh) -> dict:
    """LMC from `workdir`, the references and the extra encoders the config lists, as tile → embedding functions."""
    crop = config.data.crop_size
    graphdef, params, step = train.load_params(config, workdir, mesh)
    logging.info("evaluating %s at step %d", workdir, step)
    encoders = {LMC: make_encoder(graphdef, params, crop, mesh)}
    for name in config.eval.references:
        if name == "untrained":
            graphdef, params = train.initial_params(config, mesh)
        else:
            ref_dir = workdir / "references" / name
            graphdef, params, _ = train.load_params(reference_config(config, name), ref_dir, mesh)
        encoders[name] = make_encoder(graphdef, params, crop, mesh)
    for extra in parse_specs(config):
        encoders[extra.name] = load_encoder(extra, config, mesh)
    return encoders


def _announce(metrics: dict, paths: dict) -> None:
    if jax.process_index() == 0:
        print(report.format_table(metrics))
        for kind, path in paths.items():
            print(f"{kind}: {path}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: epath.Path) -> dict:
    """Builds the embedded data if needed, trains LMC, then (eval.at_end) the trained references, evaluates all."""
    input_pipeline.ensure_built(config)
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    train.train(config, workdir, mesh)
    if not config.eval.at_end:
        return {}
    for name in config.eval.references:
        if name != "untrained":
            logging.info("training reference %r", name)
            train.train(reference_config(config, name), workdir / "references" / name, mesh)
    metrics, paths = _evaluate(config, _encoders(config, workdir, mesh), workdir / "eval")
    _announce(metrics, paths)
    return metrics


def _evaluate(config: ml_collections.ConfigDict, encoders: dict, out_dir: epath.Path) -> tuple[dict, dict]:
    """All encoders, plus the stain-normalisation baselines (fitted to source training tiles) in front of
    the encoders `config.eval.normalizer_encoders` names."""
    names = tuple(config.eval.normalizers)
    if not names:
        return pipeline.evaluate_encoders(config, encoders, out_dir)
    data = pipeline.load_eval_data(config)
    reference = data.source_train_images()[: config.eval.normalizer_fit_tiles]
    return pipeline.evaluate_encoders(
        config, encoders, out_dir, data=data,
        input_transforms=fit_normalizers(names, reference),
        transform_encoders=tuple(n for n in config.eval.normalizer_encoders if n in encoders),
    )


def evaluate_workdir(config: ml_collections.ConfigDict, run_dir: epath.Path, workdir: epath.Path) -> dict:
    """Evaluates a finished run (its LMC checkpoint and references) into `workdir/eval`."""
    mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    metrics, paths = _evaluate(config, _encoders(config, run_dir, mesh), workdir / "eval")
    _announce(metrics, paths)
    return metrics
