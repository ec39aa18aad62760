"""Evaluates a set of encoders on the held-out sites of a data set and writes the report.

Encoders come in as functions uint8 tiles → embeddings, so a trained checkpoint, an untrained
model and the raw-colour baseline are all evaluated the same way. Input transforms (stain
normalisers fitted to a source reference) make further methods: "normaliser, then the same
encoder", one dict entry each.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from data_pipelines import input_pipeline
from lmc_jax.evaluate import figures, report, suite
from lmc_jax.evaluate.embed import colour_statistics, embed
from lmc_jax.evaluate.settings import Settings
from lmc_jax.stain.sites import ALL_SITE_NAMES, IHC_SITE, SITE_NAMES

RAW_COLOUR = "raw_colour_stats"
Images = np.ndarray  # uint8 (N, H, W, 3)


def load_eval_data(config: ml_collections.ConfigDict) -> tuple[dict, dict]:
    """(train split, held-out H&E sites + the unseen IHC split concatenated) as in-memory arrays.

    Tile ids are unique across splits (the builder numbers train, then heldout, then ihc); `region`
    is the grouping key (a region plays the role of a patient; the IHC image has its own).
    """
    data_dir = config.data.data_dir
    train = input_pipeline.load_split(config, data_dir, "train")
    heldout = input_pipeline.load_split(config, data_dir, "heldout")
    ihc = input_pipeline.load_split(config, data_dir, "ihc")
    both = {key: np.concatenate([heldout[key], ihc[key]]) for key in heldout}
    return train, both


def method_embeddings(features: Callable[[Images], np.ndarray], train: dict, heldout: dict) -> suite.MethodEmbeddings:
    """Embeds both sets with one feature function; regions become the grouping key."""
    return suite.MethodEmbeddings(
        train=features(train["image"]),
        train_labels=train["label"],
        heldout=features(heldout["image"]),
        heldout_labels=heldout["label"],
        heldout_sites=heldout["site"],
        heldout_tile_ids=heldout["tile_id"],
        train_groups=train["region"],
        heldout_groups=heldout["region"],
    )


def _transformed(transform: Callable[[Images], Images], features: Callable[[Images], np.ndarray],
                 name: str) -> Callable[[Images], np.ndarray]:
    """features ∘ transform, checking the transform keeps uint8 images of the same shape."""
    def apply(images: Images) -> np.ndarray:
        out = np.asarray(transform(images))
        if out.shape != images.shape or out.dtype != np.uint8:
            raise ValueError(f"input transform {name!r} must map uint8 {images.shape} to uint8 of the same shape; "
                             f"got {out.dtype} {out.shape}.")
        return features(out)

    return apply


def feature_functions(config: ml_collections.ConfigDict, encoders: Mapping[str, Callable],
                      input_transforms: Mapping[str, Callable[[Images], Images]] | None = None,
                      transform_encoders: Sequence[str] | None = None) -> dict[str, Callable[[Images], np.ndarray]]:
    """Method name → uint8 images → embeddings: every encoder, the raw-colour baseline, and each input
    transform in front of each encoder in `transform_encoders` (None = all), named f"{transform}+{encoder}"."""
    batch = config.eval.batch_size
    methods = {name: (lambda images, enc=encoder: embed(enc, images, batch)) for name, encoder in encoders.items()}
    methods[RAW_COLOUR] = lambda images: colour_statistics(images, config.data.crop_size)
    chosen = list(encoders) if transform_encoders is None else list(transform_encoders)
    unknown = sorted(set(chosen) - set(encoders))
    if unknown:
        raise ValueError(f"transform_encoders names {unknown}, which are not among the encoders {sorted(encoders)}.")
    for t_name, transform in (input_transforms or {}).items():
        for e_name in chosen:
            methods[f"{t_name}+{e_name}"] = _transformed(transform, methods[e_name], t_name)
    return methods


def evaluate_encoders(
    config: ml_collections.ConfigDict, encoders: dict[str, Callable], out_dir: pathlib.Path, *,
    input_transforms: Mapping[str, Callable[[Images], Images]] | None = None,
    transform_encoders: Sequence[str] | None = None,
) -> tuple[dict, dict[str, pathlib.Path]]:
    """Embeds the evaluation data with every method (encoders, raw colour, transforms + encoders), writes `out_dir`.

    `input_transforms` maps a name to a uint8 → uint8 image function (e.g. a stain normaliser fitted to
    the source site); each runs in front of the encoders named in `transform_encoders` (None = all).
    """
    train, heldout = load_eval_data(config)
    methods = {name: method_embeddings(f, train, heldout)
               for name, f in feature_functions(config, encoders, input_transforms, transform_encoders).items()}
    metrics = suite.evaluate_embeddings(
        methods,
        site_names=ALL_SITE_NAMES,
        source_site=SITE_NAMES[0],
        key=jax.random.key(config.seed),
        settings=Settings.from_config(config.eval),
        summary_exclude=(IHC_SITE,),  # another image, other tissue: distance mixes biology with stain
    )
    projections = {name: figures.Projection(figures.pca_2d(m.heldout), m.heldout_sites, m.heldout_labels)
                   for name, m in methods.items()}
    paths = report.write_report(metrics, out_dir, projections=projections)
    return metrics, paths
