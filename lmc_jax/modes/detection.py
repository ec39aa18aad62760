"""`mode=detection`: mitotic-figure detection across scanners (configs/midog_detection.py), or its embedded analogue,
proxy nuclei of the embedded slide across the evaluation sites (configs/detection_embedded.py).

Without config.detection.checkpoint, trains LMC in the workdir and the other encoders config.detection.rows name
under references/<name>/ (as mode=train does, no embedding evaluation), then trains one heat-map head per row on
the source scanner and scores every scanner with MIDOG's F1 → WORKDIR/detection/results.{json,md}.
"""

from __future__ import annotations

import logging

import jax
import ml_collections
from etils import epath

from data_pipelines import input_pipeline, sites
from lmc_jax import configlib, methods, modes, train
from lmc_jax.config_edit import with_values
from lmc_jax.detection import data as ddata
from lmc_jax.detection import experiment
from lmc_jax.detection.heatmap import LOSSES
from lmc_jax.errors import ConfigError, require


def validate(config: ml_collections.ConfigDict) -> None:
    """The training checks of configlib, then config.detection's own."""
    configlib.validate(with_values(config, {"mode": "train"}))
    d = config.detection

    def check(ok: bool, key: str, fix: str) -> None:
        require(ok, f"detection.{key}", d[key], fix, error=ConfigError)

    check(len(d.rows) > 0, "rows", "name one or more rows, e.g. ('geometric_only', 'macenko+geometric_only', 'lmc')")
    for name in d.rows:
        experiment.parse_row(name)
    source = experiment.data_source(d)
    require(source in experiment.DATA_SOURCES, "detection.data_source", source,
            f"choose one of {experiment.DATA_SOURCES}", error=ConfigError)
    if source == experiment.EMBEDDED:
        _validate_embedded(d)
    else:
        require(bool(config.data.manual_dir), "data.manual_dir", config.data.manual_dir,
                "the folder holding MIDOG.json and the TIFF images (detection reads whole images)", error=ConfigError)
        check(d.source_scanner in ddata.SCANNERS[:3], "source_scanner",
              f"choose an annotated scanner of {ddata.SCANNERS[:3]}")
    check(d.loss in LOSSES, "loss", f"choose one of {sorted(LOSSES)}")
    for key in ("test_fraction", "val_fraction"):
        check(0 < d[key] < 1, key, "must lie in (0, 1)")
    for key in ("radius_microns", "min_distance_microns", "sigma_microns", "learning_rate"):
        check(d[key] > 0, key, "must be > 0")
    for key in ("num_steps", "batch_size", "hidden", "heatmap_stride", "max_thresholds", "normalizer_fit_tiles"):
        check(int(d[key]) >= 1, key, "must be a positive integer")
    for key in ("negatives_per_image", "jitter_per_truth"):
        check(int(d[key]) >= 0, key, "must be ≥ 0")
    check(0 <= d.positive_fraction <= 1, "positive_fraction", "must lie in [0, 1]")
    check(0 <= d.candidate_floor < 1, "candidate_floor", "must lie in [0, 1)")
    check(d.microns_per_pixel >= 0, "microns_per_pixel", "must be ≥ 0 (0 = the per-scanner table)")
    check(isinstance(d.finetune_encoder, bool), "finetune_encoder", "must be True or False")


def _validate_embedded(d: ml_collections.ConfigDict) -> None:
    """config.detection's keys of the embedded analogue (lmc_jax/detection/embedded.py)."""

    def check(ok: bool, key: str, fix: str) -> None:
        require(ok, f"detection.{key}", d[key], fix, error=ConfigError)

    check(len(d.sites) > 0 and all(s in sites.SITE_NAMES for s in d.sites), "sites",
          f"name renderable sites of {sites.SITE_NAMES}")
    check(d.source_scanner in d.sites, "source_scanner", f"choose a site of config.detection.sites {tuple(d.sites)}")
    check(len(d.embedded_crop) in (0, 4), "embedded_crop", "() for the whole slide, or (y0, x0, height, width)")
    check(int(d.region_size) >= 1, "region_size", "must be a positive integer")
    check(0 <= d.min_region_tissue <= 1, "min_region_tissue", "must lie in [0, 1]")
    for key in ("nucleus_radius_microns", "nucleus_min_distance_microns"):
        check(d[key] > 0, key, "must be > 0")
    check(d.nucleus_min_area_microns2 >= 0, "nucleus_min_area_microns2", "must be ≥ 0")


def run(config: ml_collections.ConfigDict, workdir: epath.Path | None) -> dict:
    """Trains the encoders (unless config.detection.checkpoint names a trained run), then the detection table."""
    mesh = modes.start(config, workdir, "encoders and detection/results.json go there")
    run_dir = config.detection.checkpoint
    if not run_dir:
        input_pipeline.ensure_built(config)
        for name in dict.fromkeys([methods.LMC, *experiment.trained_encoders(config.detection.rows)]):
            logging.info("training encoder %r", name)
            trained = config if name == methods.LMC else methods.training_config(config, name)
            train.train(trained, methods.workdir_of(workdir, name), mesh)
        run_dir = workdir
    results = experiment.run(config, epath.Path(run_dir), workdir / "detection", mesh)
    if jax.process_index() == 0:
        print(experiment.markdown(results))
    return results
