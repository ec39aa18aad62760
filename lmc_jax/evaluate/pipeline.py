"""Evaluates a set of methods on the held-out sites of a data set and writes the report.

Methods come in as features functions uint8 tiles → embeddings (`lmc_jax.methods` builds them), so a
trained checkpoint, an untrained model, the raw-colour baseline and a normaliser in front of an
encoder are all evaluated the same way.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from data_pipelines import input_pipeline
from lmc_jax.evaluate import figures, report, suite
from lmc_jax.evaluate.embed import Features
from lmc_jax.evaluate.settings import Settings


@dataclasses.dataclass(frozen=True)
class EvalData:
    """The evaluation tiles of a data set and the roles of its sites.

    `train` (config.eval.source_split) fits the probes and normalisers; `heldout` (the splits of
    config.eval.heldout_splits, concatenated) holds every site's test tiles, the source site's included.
    """

    train: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray]
    site_names: tuple[str, ...]
    source_site: str
    summary_exclude: tuple[str, ...]

    def source_train_images(self) -> np.ndarray:
        """The source site's training tiles (what a normaliser is fitted to)."""
        return self.train["image"][self.train["site"] == self.site_names.index(self.source_site)]


def load_eval_data(config: ml_collections.ConfigDict) -> EvalData:
    """Reads the splits config.eval names from config.data's data set; site names come from its metadata.

    The source site is config.eval.source_site, or the most frequent site of the source split. Sites of
    the source split other than the source site were seen in training, so they join the configured
    summary_exclude: reported per site, left out of the "unseen" means; with config.eval.source_only their
    tiles are dropped from the source split instead, and they count as unseen. Tile ids are unique across splits;
    `region` is the grouping key (patient, slide or region).
    """
    ev, data_dir = config.eval, config.data.data_dir
    splits = (ev.source_split, *ev.heldout_splits)
    rng = np.random.default_rng(config.seed)
    train, *parts = [input_pipeline.load_split(config, data_dir, split, _at_most(
        input_pipeline.split_size(config, data_dir, split), ev.max_split_tiles, rng)) for split in splits]
    heldout = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    for split, part in zip(splits, (train, *parts)):
        unlabelled = int(np.sum(part["label"] < 0))
        if unlabelled:
            raise ValueError(f"split {split!r} of {config.data.name} has {unlabelled} unlabelled tiles (label -1); the "
                             "probes need labels: evaluate on labelled splits (config.eval.source_split / heldout_splits).")
    names = tuple(input_pipeline.site_names(config, data_dir, ev.source_split))
    source = ev.source_site or names[int(np.bincount(train["site"], minlength=len(names)).argmax())]
    where = f"{config.data.name} under {data_dir}"
    if source not in names:
        raise ValueError(f"config.eval.source_site={source!r} is not a site of {where}; its sites: {list(names)}.")
    if not np.any(train["site"] == names.index(source)):
        raise ValueError(f"source site {source!r} has no tiles in config.eval.source_split={ev.source_split!r} of "
                         f"{where}: the probes and normalisers are fitted to the source's training tiles.")
    if ev.source_only:
        keep = train["site"] == names.index(source)
        train = {key: value[keep] for key, value in train.items()}
    if not np.any(heldout["site"] == names.index(source)):
        raise ValueError(f"source site {source!r} has no tiles in config.eval.heldout_splits={tuple(ev.heldout_splits)} "
                         f"of {where}: the source's own held-out tiles are the reference of every distance; add a "
                         "split that holds them.")
    seen = [names[i] for i in np.unique(train["site"]) if names[i] != source]
    exclude = tuple(dict.fromkeys([*ev.summary_exclude, *seen]))
    unknown = sorted(set(ev.summary_exclude) - set(names))
    if unknown:
        raise ValueError(f"config.eval.summary_exclude names {unknown}, not sites of {where}: {list(names)}.")
    return EvalData(train, heldout, names, source, exclude)


def _at_most(size: int, limit: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted random indices of `limit` of `size` records; None (all of them) for limit 0 or a smaller split."""
    if not limit or size <= limit:
        return None
    return np.sort(rng.choice(size, limit, replace=False))


def _paired_tile_ids(heldout: dict) -> np.ndarray | None:
    """Tile ids when some tile is rendered at several sites (the embedded set's paired sites), else None."""
    ids = heldout["tile_id"]
    return ids if len(np.unique(ids)) < len(ids) else None


def method_embeddings(features: Features, train: dict, heldout: dict) -> suite.MethodEmbeddings:
    """Embeds both sets with one feature function; regions become the grouping key (and the image that tile
    coordinates refer to, for detection metrics)."""
    return suite.MethodEmbeddings(
        train=features(train["image"]),
        train_labels=train["label"],
        heldout=features(heldout["image"]),
        heldout_labels=heldout["label"],
        heldout_sites=heldout["site"],
        heldout_tile_ids=_paired_tile_ids(heldout),
        train_groups=train["region"],
        heldout_groups=heldout["region"],
        train_sites=train["site"],
        heldout_coords=heldout["coords"],
        train_coords=train["coords"],
        tile_size=int(heldout["image"].shape[1]),
    )


def evaluate_features(
    config: ml_collections.ConfigDict, features: Mapping[str, Features], out_dir: pathlib.Path, *,
    data: EvalData | None = None, provenance: Mapping[str, dict] | None = None,
) -> tuple[dict, dict[str, pathlib.Path]]:
    """Embeds the evaluation data with every method's features function, scores them, writes `out_dir`.

    `data` is `load_eval_data(config)` when the caller has it already; `provenance` (method → which run,
    step and weights) is recorded in metrics.json under "encoders" and in the report.
    """
    data = data or load_eval_data(config)
    methods = {name: method_embeddings(f, data.train, data.heldout) for name, f in features.items()}
    metrics = suite.evaluate_embeddings(
        methods,
        site_names=data.site_names,
        source_site=data.source_site,
        key=jax.random.key(config.seed),
        settings=Settings.from_config(config.eval),
        summary_exclude=data.summary_exclude,
    )
    if provenance:
        metrics["encoders"] = {name: dict(provenance[name]) for name in methods if name in provenance}
    projections = {name: figures.Projection(figures.pca_2d(m.heldout), m.heldout_sites, m.heldout_labels)
                   for name, m in methods.items()}
    paths = report.write_report(metrics, out_dir, projections=projections)
    return metrics, paths
