"""The experiment configs end to end on tiny replicas of their data sets (each well under a minute on 2 cores)."""

import json
import runpy
import zipfile

import numpy as np
import pytest
from etils import epath

from data_pipelines import input_pipeline
from data_pipelines.builders import camelyon16, camelyon17_wilds
from lmc_jax.modes import detection as detection_mode
from lmc_jax.modes import train as train_mode
from lmc_jax.modes import wilds as wilds_mode
from tests import test_builder_camelyon16 as c16
from tests.test_builder_camelyon17_wilds import make_replica as make_wilds_replica
from tests.test_builder_midog import make_painted_replica
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
    data_dir = tmp_path_factory.mktemp("midog_tfds")
    data = make_painted_replica(root, data_dir)
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


def _camelyon16_replica(root):
    """The camelyon16 builder test's replica: CAMELYON16/training/{normal,tumor}/*.tif + lesion_annotations.zip."""
    for seed, stem in enumerate(c16.SLIDES):
        kind = stem.split("_")[0]
        (root / "training" / kind).mkdir(parents=True, exist_ok=True)
        c16.write_pyramid(root / "training" / kind / f"{stem}.tif", c16.slide_pixels(seed), subifds=seed % 2 == 1)
    with zipfile.ZipFile(root / "training" / "lesion_annotations.zip", "w") as archive:
        for stem in c16.SLIDES[4:8]:
            archive.writestr(f"{stem}.xml", c16.polygon_xml({"_0": c16.TUMOUR_BOX, "_2": c16.EXCLUSION_BOX}))


def test_camelyon16_crossbatch_config_end_to_end(tmp_path):
    root = tmp_path / "CAMELYON16"
    _camelyon16_replica(root)
    data_dir = tmp_path / "tfds"
    camelyon16.build_dataset(data_dir, root, config=c16.config())
    config = _shrink(runpy.run_path("configs/camelyon16_crossbatch.py")["get_config"](), tiny_config())
    config.data.data_dir, config.data.builder_config = str(data_dir), "test32"
    ev = config.eval
    ev.protocols, ev.signature_folds, ev.bootstrap_replicates, ev.min_site_samples = (), 0, 0, 2
    ev.normalizer_fit_tiles = 16
    # the config's rows: every normaliser in front of both encoders; the run below keeps one of the six (each costs
    # its own compiles: all six made this test take ten minutes on a busy 2-core machine)
    assert tuple(ev.normalizers) == ("macenko", "reinhard", "vahadane")
    assert tuple(ev.normalizer_encoders) == ("geometric_only", "lmc")
    ev.normalizers, ev.normalizer_encoders = ("macenko",), ("lmc",)
    assert tuple(config.data.train_sites) == ("radboud_umc",)  # the encoders never see Utrecht
    stream = input_pipeline.make_train_iterator(config, data_dir)
    radboud = input_pipeline.site_names(config, data_dir, "train").index("radboud_umc")
    assert {int(s) for _ in range(3) for s in next(stream)["site"]} == {radboud}
    train_mode.validate(config)
    metrics = train_mode.run(config, tmp_path / "work")
    assert set(metrics["methods"]) == {"lmc", "geometric_only", "macenko+lmc"}
    assert metrics["source_site"] == "radboud_umc"
    for name, m in metrics["methods"].items():  # Utrecht is unseen: the cross-batch AUC is its probe AUC
        utrecht = m["per_site"]["umc_utrecht"]
        assert utrecht["auc"] is None or 0 <= utrecht["auc"] <= 1, name
        assert "mean_unseen_auc" in m["summary"]
    assert (tmp_path / "work" / "eval" / "metrics.json").is_file()


def test_camelyon17_wilds_config_end_to_end(tmp_path):
    make_wilds_replica(tmp_path / "camelyon17_v1.0")
    data_dir = tmp_path / "tfds"
    camelyon17_wilds.build_dataset(data_dir, tmp_path / "camelyon17_v1.0")
    config = _shrink(runpy.run_path("configs/camelyon17_wilds.py")["get_config"](), tiny_config())
    config.data.data_dir, config.data.tile_size, config.data.builder_config = str(data_dir), 96, ""
    config.wilds.seeds = (0, 1)
    config.wilds.finetune_steps, config.wilds.finetune_batch_size, config.wilds.finetune_eval_every = 2, 8, 1
    wilds_mode.validate(config)
    board = wilds_mode.run(config, epath.Path(tmp_path / "work"))
    assert json.loads((tmp_path / "work" / "leaderboard.json").read_text()) == json.loads(json.dumps(board))
    ours, tuned, erm = board["rows"]
    assert erm["test"] == (70.3, 6.4) and erm["seeds"] == 10 and ours["seeds"] == tuned["seeds"] == 2
    # the replica: 12 patches per centre, centre 1 all in val, centre 2 all in test, id_val = split code 1
    assert board["examples"] == {"train": 24, "id_val": 12, "val": 12, "test": 12}
    for split in ("id_val", "val", "test"):
        per_seed = [board["per_seed"][s][split] for s in ("0", "1")]
        assert all(0 <= a <= 100 and (a * 12 / 100) == pytest.approx(round(a * 12 / 100)) for a in per_seed)
        assert ours[split][0] == pytest.approx(np.mean(per_seed))
        assert ours[split][1] == pytest.approx(abs(per_seed[0] - per_seed[1]) / np.sqrt(2))  # ddof 1, two seeds
        fine = [board["per_seed_finetuned"][s]["accuracy"][split] for s in ("0", "1")]
        assert tuned[split][0] == pytest.approx(np.mean(fine))
        assert tuned[split][1] == pytest.approx(abs(fine[0] - fine[1]) / np.sqrt(2))
    for s in ("0", "1"):  # candidates at steps 1 and 2, the best OOD-val accuracy kept (the earliest on ties)
        history = board["per_seed_finetuned"][s]["selection"]
        assert [step for step, _ in history] == [1, 2]
        assert board["per_seed_finetuned"][s]["selected_step"] == max(history, key=lambda h: h[1])[0]
    table = (tmp_path / "work" / "leaderboard.md").read_text()
    assert "| ERM (WILDS, published) | — | — | 70.3 ± 6.4 | 10 |" in table
    assert "| LMC + linear probe (this run) |" in table
    assert "| LMC + fine-tuned linear head (this run) |" in table
