"""Evaluates a set of encoders on the held-out sites of a data set and writes the report.

Encoders come in as functions uint8 tiles → embeddings, so a trained checkpoint, an untrained
model and the raw-colour baseline are all evaluated the same way.
"""

from __future__ import annotations

import pathlib
from typing import Callable

import jax
import ml_collections
import numpy as np

from data_pipelines import input_pipeline
from lmc_jax.evaluate import report, suite
from lmc_jax.evaluate.embed import colour_statistics, embed
from lmc_jax.stain.sites import ALL_SITE_NAMES, IHC_SITE, SITE_NAMES

RAW_COLOUR = "raw_colour_stats"


def load_eval_data(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(train split, held-out H&E sites + the unseen IHC split concatenated) as in-memory arrays.

    Tile ids are unique across splits (the builder numbers train, then heldout, then ihc).
    """
    data_dir = config.data.data_dir
    train = input_pipeline.load_split(config, data_dir, "train")
    heldout = input_pipeline.load_split(config, data_dir, "heldout")
    ihc = input_pipeline.load_split(config, data_dir, "ihc")
    both = {key: np.concatenate([heldout[key], ihc[key]]) for key in heldout}
    return train, both


def method_embeddings(features: Callable[[np.ndarray], np.ndarray], train: dict, heldout: dict) -> suite.MethodEmbeddings:
    """Embeds both sets with one feature function."""
    return suite.MethodEmbeddings(
        train=features(train["image"]),
        train_labels=train["label"],
        heldout=features(heldout["image"]),
        heldout_labels=heldout["label"],
        heldout_sites=heldout["site"],
        heldout_tile_ids=heldout["tile_id"],
    )


def evaluate_encoders(
    config: ml_collections.ConfigDict, encoders: dict[str, Callable], out_dir: pathlib.Path
) -> tuple[dict, dict[str, pathlib.Path]]:
    """Embeds the evaluation data with every encoder (plus the raw-colour baseline) and writes `out_dir`."""
    train, heldout = load_eval_data(config)
    batch = config.eval.batch_size
    methods = {
        name: method_embeddings(lambda images, enc=encoder: embed(enc, images, batch), train, heldout)
        for name, encoder in encoders.items()
    }
    methods[RAW_COLOUR] = method_embeddings(
        lambda images: colour_statistics(images, config.data.crop_size), train, heldout
    )
    metrics = suite.evaluate_embeddings(
        methods,
        site_names=ALL_SITE_NAMES,
        source_site=SITE_NAMES[0],
        key=jax.random.key(config.seed),
        l2=config.eval.probe_l2,
        summary_exclude=(IHC_SITE,),  # another image, other tissue: distance mixes biology with stain
    )
    projections = {name: (report.pca_2d(m.heldout), m.heldout_sites) for name, m in methods.items()}
    paths = report.write_report(metrics, out_dir, projections=projections)
    return metrics, paths
