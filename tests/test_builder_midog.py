"""TFDS builder `midog` on a tiny replica of MIDOG 2021 (TIFFs + COCO-style MIDOG.json, bbox = x1, y1, x2, y2)."""

import json
import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
import tifffile

from data_pipelines import tiling
from data_pipelines.builders.midog import MidogConfig, build_dataset

IDS = (1, 2, 51, 52, 101, 102, 151, 152)  # two images per scanner
HEIGHT, WIDTH, TILE = 160, 224, 32


def tissue_image(rng: np.random.Generator) -> np.ndarray:
    """Pink H&E-like tissue on the left two thirds, white glass on the right third."""
    image = np.full((HEIGHT, WIDTH, 3), 245, np.uint8)
    tissue = np.array([200, 120, 180]) + rng.integers(-20, 20, (HEIGHT, WIDTH * 2 // 3, 3))
    image[:, : WIDTH * 2 // 3] = tissue.clip(0, 255).astype(np.uint8)
    return image


def make_replica(root: pathlib.Path) -> tuple[dict, dict[int, np.ndarray]]:
    """MIDOG.json + images/NNN.tiff; annotated images get 2 mitoses (one at the border) and 1 hard negative."""
    rng = np.random.default_rng(2)
    (root / "images").mkdir(parents=True)
    data = {"images": [], "categories": [{"id": 1, "name": "mitotic figure"}, {"id": 2, "name": "hard negative"}],
            "annotations": []}
    pixels = {}
    for image_id in IDS:
        pixels[image_id] = tissue_image(rng)
        tifffile.imwrite(root / "images" / f"{image_id:03d}.tiff", pixels[image_id], photometric="rgb")
        data["images"].append({"license": 1, "file_name": f"{image_id:03d}.tiff", "id": image_id,
                               "width": WIDTH, "height": HEIGHT})
        if image_id > 150:
            continue
        for category, (x, y) in ((1, (40 + image_id % 7, 60)), (1, (5, 150)), (2, (100, 30 + image_id % 5))):
            data["annotations"].append({"bbox": [x - 25, y - 25, x + 25, y + 25], "category_id": category,
                                        "image_id": image_id, "id": len(data["annotations"]) + 1})
    (root / "MIDOG.json").write_text(json.dumps(data))
    return data, pixels


def config() -> MidogConfig:
    return MidogConfig(name="test32", tile_size=TILE, random_per_image=3, unlabelled_per_image=4, test_fraction=0.5)


def load(data_dir: pathlib.Path) -> dict[str, dict[str, np.ndarray]]:
    source = tfds.data_source("midog/test32", data_dir=str(data_dir), download=False)
    return {split: {k: np.stack([ex[k] for ex in source[split]]) for k in source[split][0]} for split in source}


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    root = tmp_path_factory.mktemp("midog")
    data, pixels = make_replica(root)
    return root, data, pixels


@pytest.fixture(scope="module")
def built(replica, tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    data_dir = tmp_path_factory.mktemp("tfds")
    return data_dir, build_dataset(data_dir, replica[0], config=config())


def test_splits_scanners_and_counts(built):
    splits = load(built[0])
    assert sorted(splits) == ["test", "train", "unlabelled"]
    train, test, unlabelled = splits["train"], splits["test"], splits["unlabelled"]
    assert set(unlabelled["region"].tolist()) == {151, 152} and (unlabelled["label"] == -1).all()
    assert (unlabelled["site"] == 3).all() and len(unlabelled["tile_id"]) == 2 * 4
    assert not set(train["region"].tolist()) & set(test["region"].tolist())
    for split in (train, test):
        assert sorted(set(split["site"].tolist())) == [0, 1, 2]  # one image per scanner on each side
        np.testing.assert_array_equal(split["site"], (split["region"] - 1) // 50)
        assert len(split["tile_id"]) == 3 * (2 + 1 + 3)  # 2 mitoses, 1 hard negative, 3 random per image
        assert (split["label"] == 1).sum() == 6
    info = tfds.builder("midog/test32", data_dir=str(built[0])).info
    assert info.features["site"].names == ["hamamatsu_xr", "hamamatsu_s360", "aperio_cs2", "leica_gt450"]


def test_patches_are_centred_on_annotations(built, replica):
    _, data, pixels = replica
    splits = load(built[0])
    for split in (splits["train"], splits["test"]):
        for row in range(len(split["tile_id"])):
            image_id, index = divmod(int(split["tile_id"][row]), 100_000)
            anns = [a for a in data["annotations"] if a["image_id"] == image_id]
            mitoses = sorted([a for a in anns if a["category_id"] == 1], key=lambda a: (a["bbox"][1], a["bbox"][0]))
            negatives = [a for a in anns if a["category_id"] == 2]
            y, x = split["coords"][row]
            patch = split["image"][row]
            if index < len(mitoses) + len(negatives):
                box = (mitoses + negatives)[index]["bbox"]
                assert split["label"][row] == (index < len(mitoses))
                assert (y + TILE // 2, x + TILE // 2) == ((box[1] + box[3]) // 2, (box[0] + box[2]) // 2)
            else:
                assert split["label"][row] == 0
                for a in mitoses:  # random tissue holds no mitotic figure
                    cx, cy = (a["bbox"][0] + a["bbox"][2]) / 2, (a["bbox"][1] + a["bbox"][3]) / 2
                    assert not (y <= cy < y + TILE and x <= cx < x + TILE)
                assert tiling.tissue_mask(patch).mean() > 0.5
            inside = pixels[image_id][max(y, 0) : y + TILE, max(x, 0) : x + TILE]
            np.testing.assert_array_equal(patch[max(-y, 0) : max(-y, 0) + inside.shape[0],
                                                max(-x, 0) : max(-x, 0) + inside.shape[1]], inside)
            if y + TILE > HEIGHT or x < 0:  # the border mitosis at (5, 150): padded white
                assert (patch[HEIGHT - y :] == 255).all() and (patch[:, : max(-x, 0)] == 255).all()


def test_rebuild_is_byte_identical(built, replica, tmp_path):
    again = build_dataset(tmp_path, replica[0], config=config())
    names = sorted(p.name for p in built[1].iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (built[1] / name).read_bytes() == (again / name).read_bytes(), name


def test_layout_errors(tmp_path, replica):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere/MIDOG\.json.*zenodo"):
        build_dataset(tmp_path / "tfds", tmp_path / "nowhere")
    data = json.loads((replica[0] / "MIDOG.json").read_text())
    (tmp_path / "MIDOG.json").write_text(json.dumps(data))
    with pytest.raises(FileNotFoundError, match=r"001\.tiff is in MIDOG\.json but not at .*images/001\.tiff"):
        build_dataset(tmp_path / "tfds", tmp_path)
    data["categories"] = [{"id": 1, "name": "mitosis"}, {"id": 2, "name": "hard negative"}]
    (tmp_path / "MIDOG.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no category named 'mitotic figure'"):
        build_dataset(tmp_path / "tfds", tmp_path)


def make_painted_replica(root: pathlib.Path, data_dir: pathlib.Path) -> dict:
    """`make_replica` with a dark nucleus painted on each mitotic figure, and its 32-px tile data set built under
    `data_dir` (builder config test32): what the detection tests train and score on. Returns the annotations."""
    data, pixels = make_replica(root)
    for ann in data["annotations"]:
        if ann["category_id"] == 1:
            x1, y1, x2, y2 = ann["bbox"]
            yy, xx = np.ogrid[: pixels[ann["image_id"]].shape[0], : pixels[ann["image_id"]].shape[1]]
            pixels[ann["image_id"]][(yy - (y1 + y2) / 2) ** 2 + (xx - (x1 + x2) / 2) ** 2 <= 36] = (60, 20, 90)
    for image_id, image in pixels.items():
        tifffile.imwrite(root / "images" / f"{image_id:03d}.tiff", image, photometric="rgb")
    build_dataset(data_dir, root, config=MidogConfig(name="test32", tile_size=32, random_per_image=15,
                                                      unlabelled_per_image=4, test_fraction=0.5))
    return data
