"""grain train iterator (resume, sharding, seeding, dihedral views) and whole-split loading, on a tiny built crop."""

import itertools
import pathlib

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from data_pipelines import input_pipeline
from data_pipelines.build import DataError
from data_pipelines.builders.cmu_small_region import CmuSmallRegionConfig, build_dataset
from data_pipelines import sites

TILE = 32


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> pathlib.Path:
    """cmu_small_region built from a 384 x 512 px slide crop with 32 px tiles (about a second)."""
    path = tmp_path_factory.mktemp("tfds")
    build_dataset(
        path,
        config=CmuSmallRegionConfig(
            name="crop32", tile_size=TILE, train_stride=16, region_size=128, crop=(1280, 640, 384, 512)
        ),
    )
    return path


def make_config(seed: int = 0, batch_size: int = 8, worker_count: int = 0) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
        {
            "seed": seed,
            "batch_size": batch_size,
            "data": {
                "name": "cmu_small_region", "tile_size": TILE, "worker_count": worker_count, "builder_config": "crop32"
            },
        }
    )


@pytest.fixture(scope="session")
def train(data_dir) -> dict[str, np.ndarray]:
    return input_pipeline.load_split(make_config(), data_dir, "train")


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return list(itertools.islice(iterator, n))


def assert_batches_equal(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> None:
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(first[key], second[key], err_msg=key)


def test_batch_layout(data_dir):
    batch = next(input_pipeline.make_train_iterator(make_config(batch_size=6), data_dir))
    assert batch["image"].dtype == np.uint8 and batch["image"].shape == (6, TILE, TILE, 3)
    assert {"label", "site", "region", "coords", "tile_id"} <= batch.keys()
    assert (batch["site"] == sites.site_id("source")).all()


def test_images_are_dihedral_views_of_stored_tiles(data_dir, train):
    stored = {int(tile_id): image for tile_id, image in zip(train["tile_id"], train["image"])}
    exact = 0
    for batch in take(input_pipeline.make_train_iterator(make_config(), data_dir), 4):
        for tile_id, image in zip(batch["tile_id"], batch["image"]):
            original = stored[int(tile_id)]
            views = [np.rot90(v, k) for v in (original, original[:, ::-1]) for k in range(4)]
            assert any(np.array_equal(image, view) for view in views)
            exact += np.array_equal(image, original)
    assert exact < 16  # 32 images: an untransformed majority would mean no augmentation


def test_resume_from_state_gives_the_same_next_batch(data_dir):
    config = make_config(seed=3)
    iterator = input_pipeline.make_train_iterator(config, data_dir)
    take(iterator, 5)
    state = iterator.get_state()
    expected = next(iterator)
    fresh = input_pipeline.make_train_iterator(config, data_dir)
    fresh.set_state(state)
    assert_batches_equal(next(fresh), expected)


def test_resume_through_orbax_checkpoint(data_dir, tmp_path):
    config = make_config(seed=5)
    iterator = input_pipeline.make_train_iterator(config, data_dir)
    take(iterator, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = next(iterator)
    fresh = input_pipeline.make_train_iterator(config, data_dir)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(7, args=ocp.args.Composite(data_iter=grain.checkpoint.CheckpointRestore(fresh)))
    assert_batches_equal(next(fresh), expected)


def test_two_processes_read_disjoint_halves_of_an_epoch(data_dir, train):
    config = make_config(batch_size=8)
    per_process = len(train["tile_id"]) // 2  # records per process per epoch
    seen = []
    for index in range(2):
        iterator = input_pipeline.make_train_iterator(config, data_dir, process_index=index, process_count=2)
        batches = take(iterator, -(-per_process // 4))
        assert all(b["image"].shape[0] == 4 for b in batches)  # local batch = global batch / processes
        ids = np.concatenate([b["tile_id"] for b in batches])[:per_process]
        assert len(set(ids.tolist())) == per_process
        seen.append(set(ids.tolist()))
    assert not seen[0] & seen[1]
    assert len(seen[0] | seen[1]) == 2 * per_process and (seen[0] | seen[1]) <= set(train["tile_id"].tolist())


def test_epochs_cover_all_records_and_reshuffle(data_dir, train):
    n = len(train["tile_id"])
    batches = take(input_pipeline.make_train_iterator(make_config(), data_dir), -(-2 * n // 8))
    stream = np.concatenate([b["tile_id"] for b in batches])
    first, second = stream[:n], stream[n : 2 * n]
    np.testing.assert_array_equal(np.sort(first), np.sort(train["tile_id"]))
    np.testing.assert_array_equal(np.sort(second), np.sort(train["tile_id"]))
    assert not np.array_equal(first, second)


def test_same_seed_same_batches_other_seed_other_order(data_dir):
    first = take(input_pipeline.make_train_iterator(make_config(seed=11), data_dir), 3)
    again = take(input_pipeline.make_train_iterator(make_config(seed=11), data_dir), 3)
    other = take(input_pipeline.make_train_iterator(make_config(seed=12), data_dir), 3)
    for a, b in zip(first, again):
        assert_batches_equal(a, b)
    order, other_order = (np.concatenate([b["tile_id"] for b in run]) for run in (first, other))
    assert not np.array_equal(order, other_order)


def test_worker_processes_give_the_same_batches(data_dir):
    reference = take(input_pipeline.make_train_iterator(make_config(seed=2), data_dir), 3)
    iterator = input_pipeline.make_train_iterator(make_config(seed=2, worker_count=1), data_dir)
    try:
        for a, b in zip(reference, take(iterator, 3)):
            assert_batches_equal(a, b)
    finally:
        iterator.close()


def test_bad_sharding_arguments(data_dir):
    with pytest.raises(ValueError, match="batch_size=9 must be a positive multiple of process_count=2"):
        input_pipeline.make_train_iterator(make_config(batch_size=9), data_dir, process_index=0, process_count=2)
    with pytest.raises(ValueError, match="process_index=2"):
        input_pipeline.make_train_iterator(make_config(), data_dir, process_index=2, process_count=2)


def test_missing_data_set_names_path_and_build_command(tmp_path):
    command = f"python -m data_pipelines.build --name cmu_small_region --config crop32 --data_dir {tmp_path}"
    with pytest.raises(DataError, match=f"not built under .*crop32.*Build it with: {command}$"):
        input_pipeline.make_train_iterator(make_config(), tmp_path)


def test_unknown_split_lists_the_available_ones(data_dir):
    with pytest.raises(ValueError, match=r"'validation' not in .*\['heldout', 'ihc', 'train'\]"):
        input_pipeline.load_split(make_config(), data_dir, "validation")


def test_load_split_is_complete_and_ordered(data_dir):
    heldout = input_pipeline.load_split(make_config(), data_dir, "heldout")
    again = input_pipeline.load_split(make_config(), data_dir, "heldout")
    assert_batches_equal(heldout, again)
    n_sites = len(sites.SITE_NAMES)
    assert heldout["image"].shape[1:] == (TILE, TILE, 3) and heldout["image"].dtype == np.uint8
    assert heldout["coords"].shape == (len(heldout["tile_id"]), 2)
    assert all(heldout[key].dtype == np.int64 for key in ("label", "site", "region", "coords", "tile_id"))
    np.testing.assert_array_equal(np.bincount(heldout["site"]), np.full(n_sites, len(heldout["site"]) // n_sites))
    assert (np.diff(heldout["tile_id"]) >= 0).all()  # tile-major: all sites of a tile are adjacent


def test_ensure_built_is_a_noop_when_built_and_explains_other_data_sets(data_dir, tmp_path):
    config = make_config()
    config.data.data_dir = str(data_dir)
    shard = next(data_dir.glob("cmu_small_region/crop32/*/*train.array_record*"))
    before = shard.stat().st_mtime_ns
    input_pipeline.ensure_built(config)
    assert shard.stat().st_mtime_ns == before
    config.data.name, config.data.data_dir = "camelyon17_wilds", str(tmp_path)
    command = (f"python -m data_pipelines.build --name camelyon17_wilds --config crop32 --data_dir {tmp_path} "
               "--manual_dir <folder with the downloaded files>")
    with pytest.raises(DataError, match="camelyon17_wilds/crop32 is not built.*manual_dir is empty") as raised:
        input_pipeline.ensure_built(config)
    assert command in str(raised.value) and "data_pipelines/builders/camelyon17_wilds/" in str(raised.value)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize("encoding", ["raw", "bytes", "zlib", "png", "jpeg"])
def test_every_image_encoding_decodes_to_the_stored_tile(train, encoding):
    from data_pipelines.builders import common

    features = common.example_features(TILE, ["source"], None, image_encoding=encoding)
    tile = train["image"][0]
    record = features.serialize_example({"image": common.encode_image(tile, encoding), "label": 1, "site": 0,
                                         "region": 2, "coords": np.array([3, 4]), "tile_id": 5})
    image = features.deserialize_example_np(record)["image"]
    assert image.dtype == np.uint8 and image.shape == tile.shape
    if encoding == "jpeg":  # lossy
        assert np.abs(image.astype(int) - tile).mean() < 4
    else:
        np.testing.assert_array_equal(image, tile)


def test_train_dataset_over_any_source_matches_the_iterator(data_dir, train):
    config = make_config(seed=3)
    source = input_pipeline.data_source(config, data_dir, "train")
    stream = iter(input_pipeline.train_dataset(source, seed=3, local_batch=8))
    for got, want in zip(take(stream, 3), take(input_pipeline.make_train_iterator(config, data_dir), 3)):
        assert_batches_equal(got, want)


class _Records:
    """A random-access source of site-only records."""

    def __init__(self, sites, regions=None, labels=None):
        regions = range(len(sites)) if regions is None else regions
        labels = [0] * len(sites) if labels is None else labels
        self.records = [{"site": np.int64(s), "region": np.int64(r), "label": np.int64(y), "tile_id": np.int64(i)}
                        for i, (s, r, y) in enumerate(zip(sites, regions, labels))]

    def __len__(self):
        return len(self.records)

    def __getitem__(self, index):
        return self.records[index]

    def __getitems__(self, indices):
        return [self.records[i] for i in indices]


def _subset_config(sites=(), fraction=0.0):
    return ml_collections.ConfigDict({"seed": 0, "data": {"train_sites": sites, "val_region_fraction": fraction}})


def test_train_sites_keep_only_those_sites_records():
    source = _Records([0, 1, 0, 2, 1])
    assert input_pipeline._train_subset(source, _subset_config(), ["a", "b", "c"]) is source
    subset = input_pipeline._train_subset(source, _subset_config(("b",)), ["a", "b", "c"])
    assert [subset[i]["tile_id"] for i in range(len(subset))] == [1, 4]
    assert [r["tile_id"] for r in subset.__getitems__([1, 0])] == [4, 1]
    with pytest.raises(DataError, match=r"names \['x'\], not sites of the train split; its sites: \['a', 'b', 'c'\]"):
        input_pipeline._train_subset(source, _subset_config(("x",)), ["a", "b", "c"])


def test_validation_regions_are_a_share_of_each_class_and_never_trained_on():
    regions = np.repeat(np.arange(20), 3)  # 20 patients, 3 tiles each; patients 0-9 benign, 10-19 malignant
    labels = (regions >= 10).astype(np.int64)
    held = input_pipeline.validation_regions(regions, labels, 0.2, seed=0)
    assert len(held) == 4 and (held < 10).sum() == 2 and (held >= 10).sum() == 2
    np.testing.assert_array_equal(held, input_pipeline.validation_regions(regions, labels, 0.2, seed=0))
    assert not np.array_equal(held, input_pipeline.validation_regions(regions, labels, 0.2, seed=1))
    assert len(input_pipeline.validation_regions(regions, labels, 0.0, seed=0)) == 0
    source = _Records(sites=[0] * 60, regions=regions, labels=labels)
    subset = input_pipeline._train_subset(source, _subset_config(fraction=0.2), ["a"])
    kept = {int(subset[i]["region"]) for i in range(len(subset))}
    assert len(subset) == 48 and kept == set(range(20)) - set(held.tolist())


def test_sample_bank_replaces_the_configured_share_of_records_with_labelled_samples():
    source = [{"image": np.zeros((4, 4, 3), np.uint8), "label": np.int64(0), "site": np.int64(1),
               "region": np.int64(7), "tile_id": np.int64(i)} for i in range(64)]
    bank = (np.full((5, 4, 4, 3), 200, np.uint8), np.ones(5, np.int64))
    stream = input_pipeline.train_dataset(source, seed=0, local_batch=64, samples=bank, sample_ratio=0.25)
    batch = next(iter(stream))
    replaced = batch["image"].reshape(64, -1).max(axis=1) == 200
    assert 6 <= replaced.sum() <= 26  # Binomial(64, 0.25): mean 16
    assert np.all(batch["label"][replaced] == 1) and np.all(batch["site"][replaced] == -1)
    assert np.all(batch["label"][~replaced] == 0) and np.all(batch["region"][~replaced] == 7)
    again = next(iter(input_pipeline.train_dataset(source, seed=0, local_batch=64, samples=bank, sample_ratio=0.25)))
    np.testing.assert_array_equal(batch["image"], again["image"])  # keyed by position: a resume sees the same


def test_train_sites_through_the_iterator(data_dir):
    config = make_config()
    config.data.train_sites = ("source",)  # the embedded train split is all source tiles: the same stream
    assert_batches_equal(next(input_pipeline.make_train_iterator(config, data_dir)),
                         next(input_pipeline.make_train_iterator(make_config(), data_dir)))
    config.data.train_sites = ("lab_shift",)
    with pytest.raises(DataError, match="no train record is left to train on"):
        input_pipeline.make_train_iterator(config, data_dir)
