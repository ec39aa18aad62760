"""TFDS builder `camelyon17_wilds` on a tiny replica of the WILDS layout: official and per-centre splits."""

import csv
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines import build, input_pipeline
from data_pipelines.builders.camelyon17_wilds import build_dataset

COLUMNS = ["", "patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split"]


def make_replica(root: pathlib.Path) -> list[dict]:
    """camelyon17_v1.0/ with 2 patients per centre, 2 nodes each, 3 patches per node; random 96x96 PNGs."""
    rng = np.random.default_rng(0)
    rows = []
    for center in range(5):
        for k in range(2):
            patient = f"{center * 20 + k + 2:03d}"  # zero-padded like the real ids ("004")
            for node in (0, 3):
                for j in range(3):
                    x, y = int(rng.integers(0, 40000)), int(rng.integers(0, 40000))
                    row = {"patient": patient, "node": node, "x_coord": x, "y_coord": y,
                           "tumor": int(rng.integers(2)), "slide": center * 10 + k * 5 + node,
                           "center": center, "split": int(j == 2)}
                    folder = root / "patches" / f"patient_{patient}_node_{node}"
                    folder.mkdir(parents=True, exist_ok=True)
                    pixels = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png")
                    rows.append(row)
    write_metadata(root / "metadata.csv", rows, COLUMNS)
    return rows


def write_metadata(path: pathlib.Path, rows: list[dict], columns: list[str]) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for index, row in enumerate(rows):
            writer.writerow([index] + [row[c] for c in columns[1:]])


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> tuple[pathlib.Path, list[dict]]:
    parent = tmp_path_factory.mktemp("wilds")
    rows = make_replica(parent / "camelyon17_v1.0")
    return parent, rows


@pytest.fixture(scope="module")
def built(replica, tmp_path_factory) -> pathlib.Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    build_dataset(data_dir, replica[0])  # the parent of camelyon17_v1.0 is accepted too
    build_dataset(data_dir, replica[0] / "camelyon17_v1.0", config="centres96")
    return data_dir


def load(data_dir: pathlib.Path, config: str) -> dict[str, dict[str, np.ndarray]]:
    source = tfds.data_source(f"camelyon17_wilds/{config}", data_dir=str(data_dir), download=False)
    return {name: {k: np.stack([ex[k] for ex in split]) for k in split[0]} for name, split in source.items()}


def test_official_splits(replica, built):
    root, rows = replica[0] / "camelyon17_v1.0", replica[1]
    splits = load(built, "tile96")
    assert sorted(splits) == ["id_val", "test", "train", "val"]
    expected = {
        "train": [i for i, r in enumerate(rows) if r["center"] in (0, 3, 4) and r["split"] == 0],
        "id_val": [i for i, r in enumerate(rows) if r["center"] in (0, 3, 4) and r["split"] == 1],
        "val": [i for i, r in enumerate(rows) if r["center"] == 1],
        "test": [i for i, r in enumerate(rows) if r["center"] == 2],
    }
    for name, indices in expected.items():
        split = splits[name]
        np.testing.assert_array_equal(split["tile_id"], indices)
        np.testing.assert_array_equal(split["label"], [rows[i]["tumor"] for i in indices])
        np.testing.assert_array_equal(split["site"], [rows[i]["center"] for i in indices])
        np.testing.assert_array_equal(split["region"], [int(rows[i]["patient"]) for i in indices])
        np.testing.assert_array_equal(split["coords"], [[rows[i]["y_coord"], rows[i]["x_coord"]] for i in indices])
        first = rows[indices[0]]
        folder = f"patient_{first['patient']}_node_{first['node']}"
        png = root / "patches" / folder / f"patch_{folder}_x_{first['x_coord']}_y_{first['y_coord']}.png"
        np.testing.assert_array_equal(split["image"][0], np.asarray(Image.open(png)))
        assert split["image"].dtype == np.uint8 and split["image"].shape[1:] == (96, 96, 3)


def test_site_names_and_label_names(built):
    info = tfds.builder("camelyon17_wilds/tile96", data_dir=str(built)).info
    assert info.features["site"].names == [f"center_{c}" for c in range(5)]
    assert info.features["label"].names == ["normal", "tumor"]


def test_per_centre_splits_partition_the_patients(replica, built):
    rows = replica[1]
    splits = load(built, "centres96")
    assert sorted(splits) == [f"center_{c}" for c in range(5)]
    patients = [set(splits[f"center_{c}"]["region"].tolist()) for c in range(5)]
    for c in range(5):
        assert (splits[f"center_{c}"]["site"] == c).all()
        assert len(patients[c]) == 2 and all(not patients[c] & patients[d] for d in range(c))
    assert sum(len(s["tile_id"]) for s in splits.values()) == len(rows)
    union = tfds.data_source("camelyon17_wilds/centres96", split="center_0+center_3", data_dir=str(built))
    assert len(union) == len(splits["center_0"]["tile_id"]) + len(splits["center_3"]["tile_id"])


def test_the_input_pipeline_reads_it_by_name(built):
    config = ml_collections.ConfigDict({"seed": 0, "batch_size": 4, "data": {
        "name": "camelyon17_wilds", "tile_size": 96, "worker_count": 0, "builder_config": ""}})  # -> tile96
    batch = next(input_pipeline.make_train_iterator(config, built))
    assert batch["image"].shape == (4, 96, 96, 3) and batch["image"].dtype == np.uint8
    assert set(batch["site"].tolist()) <= {0, 3, 4}
    val = input_pipeline.load_split(config, built, "val")
    assert (val["site"] == 1).all() and val["coords"].shape == (len(val["tile_id"]), 2)


def test_rebuild_in_another_process_is_byte_identical(replica, built, tmp_path):
    script = (
        "from data_pipelines.builders.camelyon17_wilds import build_dataset; "
        f"build_dataset({str(tmp_path)!r}, {str(replica[0])!r})"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "4321", "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", script], cwd=root, env=env, check=True, capture_output=True)
    first, second = (d / "camelyon17_wilds" / "tile96" / "1.0.0" for d in (built, tmp_path))
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir()) and len(names) > 4
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_cli_is_a_noop_when_built(built, replica, capsys):
    assert build.main(["--name", "camelyon17_wilds", "--data_dir", str(built), "--manual_dir", str(replica[0])]) == 0
    assert "train: 24 examples" in capsys.readouterr().out  # 3 centres x 2 patients x 2 nodes x 2


def test_missing_manual_dir_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere/camelyon17_v1\.0\.\n.*get_dataset"):
        build_dataset(tmp_path / "tfds", tmp_path / "nowhere")
    with pytest.raises(ValueError, match="pass --manual_dir"):
        build.build("camelyon17_wilds", tmp_path / "tfds")


def test_wrong_columns_are_named(tmp_path):
    root = tmp_path / "camelyon17_v1.0"
    root.mkdir()
    rows = [{"patient": "004", "node": 0, "x": 1, "y": 2}]
    write_metadata(root / "metadata.csv", rows, ["", "patient", "node", "x", "y"])
    with pytest.raises(ValueError, match=r"missing \['x_coord', 'y_coord', 'tumor', 'slide', 'center', 'split'\]"):
        build_dataset(tmp_path / "tfds", root)


def test_missing_patch_names_the_file(tmp_path):
    rows = make_replica(tmp_path / "camelyon17_v1.0")
    lost = rows[5]
    folder = f"patient_{lost['patient']}_node_{lost['node']}"
    patches = tmp_path / "camelyon17_v1.0" / "patches"
    (patches / folder / f"patch_{folder}_x_{lost['x_coord']}_y_{lost['y_coord']}.png").unlink()
    with pytest.raises(FileNotFoundError, match=f"patch 5 of metadata.csv.*{folder}"):
        build_dataset(tmp_path / "tfds", tmp_path)


def test_evaluation_reads_the_official_splits_and_their_sites(built, tmp_path):
    """The evaluation pipeline on a real data set's layout: site names from its metadata, the most frequent
    training centre as source, the other training centres left out of the unseen means."""
    from lmc_jax.evaluate import pipeline  # pylint: disable=import-outside-toplevel
    from lmc_jax.methods import RAW_COLOUR, raw_colour_features  # pylint: disable=import-outside-toplevel
    from tests.tiny_config import tiny_config  # pylint: disable=import-outside-toplevel

    config = tiny_config()
    config.data.update(name="camelyon17_wilds", builder_config="tile96", data_dir=str(built), tile_size=96)
    config.eval.update(source_split="train", heldout_splits=("id_val", "val", "test"), source_site="",
                       summary_exclude=(), min_site_samples=2, bootstrap_replicates=0, protocols=(),
                       signature_folds=0)
    data = pipeline.load_eval_data(config)
    assert data.site_names == tuple(f"center_{i}" for i in range(5))
    assert data.source_site == "center_0" and data.summary_exclude == ("center_3", "center_4")
    assert len(data.train["image"]) == 24 and len(data.heldout["image"]) == 12 + 12 + 12
    assert (data.source_train_images() == data.train["image"][data.train["site"] == 0]).all()
    metrics, paths = pipeline.evaluate_features(config, {RAW_COLOUR: raw_colour_features(config)}, tmp_path)
    assert metrics["source_site"] == "center_0" and metrics["sites"] == list(data.site_names)
    assert set(metrics["methods"][RAW_COLOUR]["per_site"]) == set(data.site_names)
    assert (tmp_path / "report.md").is_file() and all(path.exists() for path in paths.values())
    config.eval.source_only = True
    only = pipeline.load_eval_data(config)
    assert (only.train["site"] == 0).all() and len(only.train["image"]) == 8 and only.summary_exclude == ()
    config.eval.update(source_only=False, max_split_tiles=20)
    assert len(pipeline.load_eval_data(config).train["image"]) == 20
    config.eval.source_site = "center_9"
    with pytest.raises(ValueError, match="center_9"):
        pipeline.load_eval_data(config)
    config.eval.update(source_site="center_1", max_split_tiles=0, heldout_splits=("test",))
    with pytest.raises(ValueError, match="no tiles in config.eval.source_split"):
        pipeline.load_eval_data(config)
    config.eval.update(source_site="center_0")
    with pytest.raises(ValueError, match="no tiles in config.eval.heldout_splits"):
        pipeline.load_eval_data(config)
    config.eval.update(source_split="test", heldout_splits=("val", "test"), source_site="")
    assert pipeline.load_eval_data(config).source_site == "center_2"  # the most frequent, not the first, site
