"""The experiment configs end to end on tiny replicas of their data sets (each well under a minute on 2 cores)."""

import json
import runpy

import numpy as np
import pytest
import tifffile
from etils import epath

from data_pipelines.builders.midog import MidogConfig, build_dataset
from lmc_jax.modes import detection as detection_mode
from tests.test_builder_midog import make_replica
from tests.tiny_config import tiny_config

MIDOG_SCANNERS = ("hamamatsu_xr", "hamamatsu_s360", "aperio_cs2")


def _shrink(config, tiny):
    """The experiment config with the tiny model, tiles and step counts of tests/tiny_config.py."""
    for key in ("model", "optimizer", "checkpoint"):
        config[key] = tiny[key]
    config.data.tile_size, config.data.crop_size = tiny.data.tile_size, tiny.data.crop_size
    config.batch_size, config.num_steps, config.log_every_steps = tiny.batch_size, 2, 2
    config.optimizer.warmup_steps = 1
    config.eval.batch_size = 32
    return config


@pytest.fixture(scope="module")
def midog_replica(tmp_path_factory):
    """The MIDOG builder test's replica (two images per scanner) with a dark nucleus painted on each mitotic figure,
    and its 32-px tile data set built."""
    root = tmp_path_factory.mktemp("midog_files")
    data, pixels = make_replica(root)
    for ann in data["annotations"]:
        if ann["category_id"] == 1:
            x1, y1, x2, y2 = ann["bbox"]
            yy, xx = np.ogrid[: pixels[ann["image_id"]].shape[0], : pixels[ann["image_id"]].shape[1]]
            pixels[ann["image_id"]][(yy - (y1 + y2) / 2) ** 2 + (xx - (x1 + x2) / 2) ** 2 <= 36] = (60, 20, 90)
    for image_id, image in pixels.items():
        tifffile.imwrite(root / "images" / f"{image_id:03d}.tiff", image, photometric="rgb")
    data_dir = tmp_path_factory.mktemp("midog_tfds")
    build_dataset(data_dir, root, config=MidogConfig(name="test32", tile_size=32, random_per_image=15,
                                                      unlabelled_per_image=4, test_fraction=0.5))
    return root, data_dir, data


def test_midog_detection_config_end_to_end(midog_replica, tmp_path):
    root, data_dir, data = midog_replica
    config = _shrink(runpy.run_path("configs/midog_detection.py")["get_config"](), tiny_config())
    config.data.data_dir, config.data.manual_dir, config.data.builder_config = str(data_dir), str(root), "test32"
    d = config.detection
    d.test_fraction = 0.5  # the replica's split: one image per scanner on each side
    d.num_steps, d.batch_size, d.hidden, d.negatives_per_image, d.jitter_per_truth = 60, 16, 16, 20, 4
    d.normalizer_fit_tiles, d.learning_rate = 32, 3e-3
    d.rows = ("lmc", "macenko+lmc")  # one trained encoder keeps the test short; the config's rows add geometric_only
    detection_mode.validate(config)
    results = detection_mode.run(config, epath.Path(tmp_path))
    on_disk = json.loads((tmp_path / "detection" / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert results["scanners"] == list(MIDOG_SCANNERS) and set(results["rows"]) == set(d.rows)
    # the builder's split with test_fraction 0.5: one training and one test image per annotated scanner
    assert len(results["images"]["test"]) == 3 and len(results["images"]["train"]) == 1
    assert results["images"]["val"] == []
    assert results["microns_per_pixel"]["hamamatsu_xr"] == 0.23 and results["radius_microns"] == 7.5
    for name, row in results["rows"].items():
        assert row["threshold_note"].startswith("fewer than 2 source training images")
        assert row["train"]["positive_windows"] >= 2 and row["train"]["last_loss"] < row["train"]["first_loss"]
        for scanner in MIDOG_SCANNERS:
            entry = row["per_scanner"][scanner]
            assert entry["images"] == 1 and entry["tp"] + entry["fn"] == 2  # two mitoses per test image
            assert entry["f1"] is None or 0 <= entry["f1"] <= 1
        unseen = [row["per_scanner"][s]["f1"] for s in MIDOG_SCANNERS[1:] if row["per_scanner"][s]["f1"] is not None]
        assert row["mean_unseen_f1"] == pytest.approx(np.mean(unseen))
    assert results["rows"]["macenko+lmc"]["normaliser"] == "macenko" and results["rows"]["lmc"]["normaliser"] == "none"
    table = (tmp_path / "detection" / "results.md").read_text()
    assert "| hamamatsu_xr (source) | hamamatsu_s360 | aperio_cs2 | mean unseen | threshold |" in table
    assert all(f"| {name} |" in table for name in d.rows)
    assert (tmp_path / "checkpoints").is_dir() and not (tmp_path / "references").exists()
