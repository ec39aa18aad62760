"""TFDS builder `breakhis` on a tiny replica of the BreaKHis_v1 folder tree: patient-disjoint splits, tiles."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data_pipelines.builders import common
from data_pipelines.builders.breakhis import BreakhisConfig, build_dataset

# (class, type folder, type code, patient id); 14-13412 sits in two malignant type folders, as in the real set.
PATIENTS = [
    ("benign", "adenosis", "A", "14-22549AB"),
    ("benign", "fibroadenoma", "F", "14-9133"),
    ("benign", "tubular_adenoma", "TA", "15-3411F"),
    ("malignant", "ductal_carcinoma", "DC", "14-2523"),
    ("malignant", "ductal_carcinoma", "DC", "14-13412"),
    ("malignant", "lobular_carcinoma", "LC", "14-13412"),
    ("malignant", "mucinous_carcinoma", "MC", "16-12773"),
]
MAGS = ("40", "100", "200", "400")
SIZE = (115, 175)  # a quarter of 460 x 700: with 48-px tiles the grid is 2 x 3, as 224-px tiles on the real size
TILE = 48


def make_replica(parent: pathlib.Path) -> dict[pathlib.Path, np.ndarray]:
    """BreaKHis_v1/histology_slides/breast/... with 2 images per patient folder and magnification."""
    images = {}
    for number, (cls, type_dir, code, patient) in enumerate(PATIENTS):
        year, slide = patient.split("-")
        breast = parent / "BreaKHis_v1/histology_slides/breast"
        folder = breast / cls / "SOB" / type_dir / f"SOB_{cls[0].upper()}_{code}_{patient}"
        for mag in MAGS:
            (folder / f"{mag}X").mkdir(parents=True)
            for seq in (1, 2):
                yy, xx = np.mgrid[: SIZE[0], : SIZE[1]]
                pixels = np.stack([(yy * 3 + xx + number * 40 + seq * 7 + int(mag)) % 256, (xx * 2 + number) % 256,
                                   (yy + xx + seq) % 256], -1).astype(np.uint8)
                path = folder / f"{mag}X" / f"SOB_{cls[0].upper()}_{code}-{year}-{slide}-{mag}-{seq:03d}.png"
                Image.fromarray(pixels).save(path)
                images[path] = pixels
    return images


def config(**kwargs) -> BreakhisConfig:
    return BreakhisConfig(**{"name": f"test{TILE}", "tile_size": TILE, "test_fraction": 0.34, **kwargs})


def load(data_dir: pathlib.Path, name: str) -> dict[str, dict[str, np.ndarray]]:
    source = tfds.data_source(f"breakhis/{name}", data_dir=str(data_dir), download=False)
    return {split: {k: np.stack([ex[k] for ex in source[split]]) for k in source[split][0]} for split in source}


@pytest.fixture(scope="module")
def replica(tmp_path_factory) -> tuple[pathlib.Path, dict[pathlib.Path, np.ndarray]]:
    parent = tmp_path_factory.mktemp("breakhis")
    return parent, make_replica(parent)


@pytest.fixture(scope="module")
def built(replica, tmp_path_factory) -> pathlib.Path:
    data_dir = tmp_path_factory.mktemp("tfds")
    build_dataset(data_dir, replica[0], config=config())
    build_dataset(data_dir, replica[0] / "BreaKHis_v1", config=config(name="fit48", mode="resize"))
    return data_dir


def test_splits_are_patient_disjoint_and_stratified(built):
    splits = load(built, f"test{TILE}")
    assert sorted(splits) == ["test", "train"]
    train, test = splits["train"], splits["test"]
    assert not set(train["region"].tolist()) & set(test["region"].tolist())
    for split in (train, test):
        assert set(split["label"].tolist()) == {0, 1}  # every class on both sides
    assert len(set(train["region"].tolist()) | set(test["region"].tolist())) == 6  # 14-13412 counted once
    n_images = 2 * len(MAGS) * len(PATIENTS)
    assert len(train["tile_id"]) + len(test["tile_id"]) == n_images * 6  # 2 x 3 tiles per image
    assert len(np.unique(np.concatenate([train["tile_id"], test["tile_id"]]))) == n_images * 6


def test_labels_sites_coords_and_pixels(built, replica):
    images = replica[1]
    paths = sorted(images)
    splits = load(built, f"test{TILE}")
    for split in splits.values():
        for row in range(0, len(split["tile_id"]), 7):
            rank, tile = divmod(int(split["tile_id"][row]), 10_000)
            path = paths[rank]
            y, x = split["coords"][row]
            np.testing.assert_array_equal(split["image"][row], images[path][y : y + TILE, x : x + TILE])
            assert split["label"][row] == ("malignant" in path.parts)
            assert split["site"][row] == MAGS.index(path.parent.name[:-1])
            assert (y, x) == common.grid_origins(*SIZE, TILE)[tile]
    info = tfds.builder(f"breakhis/test{TILE}", data_dir=str(built)).info
    assert info.features["site"].names == ["40X", "100X", "200X", "400X"]
    assert info.features["label"].names == ["benign", "malignant"]


def test_a_patient_in_two_type_folders_is_one_region(built, replica):
    paths = sorted(replica[1])
    splits = load(built, f"test{TILE}")
    regions = {}
    for split in splits.values():
        for tile_id, region in zip(split["tile_id"], split["region"]):
            regions.setdefault(paths[tile_id // 10_000].parent.parent.name.rsplit("_", 1)[1], set()).add(int(region))
    assert len(regions) == 6 and all(len(r) == 1 for r in regions.values())  # one region per patient id
    assert len(set().union(*regions.values())) == 6


def test_resize_mode_fits_the_whole_image(built, replica):
    images = replica[1]
    paths = sorted(images)
    splits = load(built, "fit48")
    total = sum(len(s["tile_id"]) for s in splits.values())
    assert total == len(images)
    split = splits["train"]
    path = paths[int(split["tile_id"][0]) // 10_000]
    expected, origin = common.fit_square(images[path], TILE)
    np.testing.assert_array_equal(split["image"][0], expected)
    assert tuple(split["coords"][0]) == origin == (0, round((73 - 48) // 2 / (48 / 115)))


def test_rebuild_is_byte_identical(built, replica, tmp_path):
    build_dataset(tmp_path, replica[0], config=config())
    first, second = (d / "breakhis" / f"test{TILE}" / "1.0.0" for d in (built, tmp_path))
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_split_groups_is_seeded_and_stratified():
    strata = {f"b{i}": "benign" for i in range(10)} | {f"m{i}": "malignant" for i in range(20)}
    test = common.split_groups(strata, 0.3, seed=0)
    assert test == common.split_groups(dict(reversed(strata.items())), 0.3, seed=0)
    assert sum(g.startswith("b") for g in test) == 3 and sum(g.startswith("m") for g in test) == 6
    assert any(common.split_groups(strata, 0.3, seed=s) != test for s in range(1, 4))


def test_layout_errors_name_the_expected_path(tmp_path, replica):
    with pytest.raises(FileNotFoundError, match=r"(?s)nowhere/BreaKHis_v1/histology_slides/breast.*BreaKHis_v1\.tar"):
        build_dataset(tmp_path / "tfds", tmp_path / "nowhere")
    folder = tmp_path / "BreaKHis_v1/histology_slides/breast"
    bad = folder / "benign/SOB/adenosis/SOB_B_A_14-22549AB/40X"
    bad.mkdir(parents=True)
    (folder / "malignant/SOB").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "SOB_M_A-14-22549AB-40-001.png")
    with pytest.raises(ValueError, match="file name says class M, 40X but its folders say benign, 40X"):
        build_dataset(tmp_path / "tfds", tmp_path)
