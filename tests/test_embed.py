"""mode=embed: a slide, a folder and a CSV of tiles → shards holding each tile once with its coordinates and the
model; the features are the API's; a crash resumes without duplicates; bad input is one UserError line."""

import json
import logging
import os
import pathlib
import shutil

import ml_collections
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import lmc_jax
from configs.embed import get_config as embed_config
from lmc_jax import api, slides
from lmc_jax.errors import UserError
from lmc_jax.modes import embed as embed_mode
from tests.test_api import make_run, slide_tiles
from tests.test_slides import slide_image, write_pyramid


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> pathlib.Path:
    return make_run(tmp_path_factory.mktemp("embed_run"))


@pytest.fixture(scope="module")
def encoder(run_dir) -> api.Encoder:
    return lmc_jax.load(run_dir, batch_size=8)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> pathlib.Path:
    """256 × 384 px, tissue on the left half, glass on the right; levels at 1, 1/2, 1/4."""
    return write_pyramid(tmp_path_factory.mktemp("embed_slide") / "slide.tif", slide_image())


@pytest.fixture
def shared_encoder(monkeypatch, run_dir, encoder):
    """mode=embed given the module's loaded encoder for run_dir (one compile for the module's runs)."""
    def load(source, **kwargs):
        assert pathlib.Path(source) == run_dir and kwargs["batch_size"] == 8
        return encoder

    monkeypatch.setattr(api, "load", load)


def _config(checkpoint: pathlib.Path, source: pathlib.Path, **values) -> ml_collections.ConfigDict:
    config = embed_config()
    config.checkpoint, config.input, config.batch_size, config.shard_size = str(checkpoint), str(source), 8, 8
    config.update(values)
    return config


def _rows(workdir: pathlib.Path) -> dict[str, np.ndarray]:
    """Every shard's columns concatenated (Parquet or NPZ), in shard order."""
    tables = []
    for path in sorted((workdir / embed_mode.SHARDS).glob("embeddings-*")):
        if path.suffix == ".parquet":
            table = pq.read_table(path)
            columns = {name: table[name].to_numpy() for name in table.column_names if name != "embedding"}
            columns["embedding"] = np.asarray(table["embedding"].to_pylist(), np.float32).reshape(table.num_rows, -1)
            tables.append(columns)
        elif path.suffix == ".npz":
            with np.load(path) as data:
                tables.append({name: data[name] for name in data.files if name != "model"})
    return {name: np.concatenate([table[name] for table in tables]) for name in tables[0]}


def test_a_slide_embeds_each_tissue_tile_once_with_coordinates_and_the_model(shared_encoder, run_dir, encoder, slide,
                                                                              tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = _config(run_dir, slide, level=1, progress_every_s=0.0)  # 24-px tiles (the run's crop) at level 1
    summary = embed_mode.run(config, tmp_path / "out")
    opened = slides.open_slide(slide)
    plan = slides.plan_tiles(opened, tile_size=24, stride=24, level=1, min_tissue=config.min_tissue)
    rows = _rows(tmp_path / "out")
    assert summary["tiles_embedded"] == len(rows["y"]) == len(plan.coords) > 8
    assert summary["background_skipped"] == plan.background >= 15 and summary["corrupt"] == 0
    assert summary["shards"] == summary["shards_finished"] == -(-len(plan.coords) // 8)
    assert json.loads((tmp_path / "out" / embed_mode.SUMMARY).read_text())["tiles_embedded"] == len(plan.coords)
    assert sorted(zip(rows["y"], rows["x"])) == sorted(plan.coords) and len(set(zip(rows["y"], rows["x"]))) == len(
        plan.coords)
    assert (rows["level"] == 1).all() and (rows["height"] == 48).all() and set(rows["path"]) == {str(slide)}
    assert set(rows["model_run"]) == {str(run_dir)} and (rows["model_step"] == 1).all()
    expected = encoder.embed(np.stack([slides.read_tile(opened, plan, y, x) for y, x in zip(rows["y"], rows["x"])]))
    np.testing.assert_allclose(rows["embedding"], expected, atol=1e-5)
    metadata = pq.read_schema(next((tmp_path / "out" / embed_mode.SHARDS).glob("*.parquet"))).metadata
    assert json.loads(metadata[b"lmc_jax_model"])["run"] == str(run_dir)
    progress = [record.getMessage() for record in caplog.records if "tiles/s" in record.getMessage()]
    assert progress and "ETA" in progress[-1] and f"{len(plan.coords)}/{len(plan.coords)} tiles" in progress[-1]


def test_a_crash_resumes_from_the_finished_shards_without_duplicates(shared_encoder, run_dir, slide, tmp_path,
                                                                      monkeypatch):
    config = _config(run_dir, slide, level=1, min_tissue=0.0)  # 5 × 8 tiles, 5 shards
    original, written = embed_mode._write_shard, []

    def crash_on_the_third(path, *args):
        if len(written) == 2:
            path.with_name(f".{path.name}.partial").write_bytes(b"half a shard")  # killed while writing
            raise KeyboardInterrupt("killed")
        written.append(path.name)
        original(path, *args)

    monkeypatch.setattr(embed_mode, "_write_shard", crash_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        embed_mode.run(config, tmp_path / "out")
    shard_dir = tmp_path / "out" / embed_mode.SHARDS
    before = {name: os.stat(shard_dir / name).st_mtime_ns for name in written}
    monkeypatch.setattr(embed_mode, "_write_shard", original)
    summary = embed_mode.run(config, tmp_path / "out")
    assert summary["this_run"]["shards_skipped"] == 2 and summary["this_run"]["shards_written"] == 3
    assert {name: os.stat(shard_dir / name).st_mtime_ns for name in written} == before  # left as they were
    rows = _rows(tmp_path / "out")
    assert len(rows["y"]) == 40 == len(set(zip(rows["y"], rows["x"]))) == summary["tiles_embedded"]
    assert not list(shard_dir.glob(".*partial"))  # the stale temporary was overwritten and renamed
    again = embed_mode.run(config, tmp_path / "out")
    assert again["this_run"]["shards_written"] == 0 and again["tiles_embedded"] == 40


def test_a_folder_counts_corrupt_and_background_files_and_normalises_first(shared_encoder, run_dir, encoder,
                                                                          tmp_path):
    folder = tmp_path / "tiles"
    (folder / "sub").mkdir(parents=True)
    tiles = slide_tiles(8, 24)  # one batch of the run's crop size: test_api's normaliser shapes
    for index, tile in enumerate(tiles):
        Image.fromarray(tile).save(folder / ("sub" if index % 2 else "") / f"tile{index}.png")
    Image.fromarray(np.full((32, 32, 3), 247, np.uint8)).save(folder / "blank.png")  # glass
    (folder / "sub" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not a tile")
    reference = tmp_path / "reference.png"
    Image.fromarray(slide_tiles(12, 24)[-1]).save(reference)
    config = _config(run_dir, folder, format="npz", normalizer="reinhard", normalizer_reference=str(reference))
    summary = embed_mode.run(config, tmp_path / "out")
    assert summary["format"] == "npz" and summary["tiles_embedded"] == 8 and summary["background_skipped"] == 1
    assert summary["corrupt"] == 1 and summary["corrupt_files"][0]["path"] == str(folder / "sub" / "corrupt.png")
    assert summary["tiling"]["ignored_files"] == 1
    rows = _rows(tmp_path / "out")
    order = [int(pathlib.Path(path).stem[4:]) for path in rows["path"]]
    assert sorted(order) == list(range(8)) and (rows["height"] == 24).all()
    normalizer = lmc_jax.stain.get_normalizer("reinhard").fit(np.asarray(Image.open(reference)))
    crops = api.prepare(tiles[order], encoder.crop_size)
    np.testing.assert_allclose(rows["embedding"], encoder.features(normalizer.transform(crops)), atol=1e-4)
    assert not np.allclose(rows["embedding"], encoder.embed(tiles[order]), atol=1e-3)  # the normaliser was applied


def test_a_csv_lists_tiles_and_a_missing_file_is_counted_not_fatal(shared_encoder, run_dir, encoder, tmp_path):
    tiles = slide_tiles(3, 32)
    for index, tile in enumerate(tiles):
        Image.fromarray(tile).save(tmp_path / f"t{index}.png")
    (tmp_path / "tiles.csv").write_text("path,label\nt0.png,1\nmissing.png,0\nt2.png,1\n")
    summary = embed_mode.run(_config(run_dir, tmp_path / "tiles.csv"), tmp_path / "out")
    assert summary["tiles_embedded"] == 2 and summary["corrupt"] == 1
    assert summary["corrupt_files"][0]["path"] == str(tmp_path / "missing.png")
    rows = _rows(tmp_path / "out")
    np.testing.assert_allclose(rows["embedding"], encoder.embed(tiles[[0, 2]]), atol=1e-5)
    (tmp_path / "bad.csv").write_text("file\nt0.png\n")
    with pytest.raises(UserError, match="config.csv_column='path': .* has no such column"):
        embed_mode.run(_config(run_dir, tmp_path / "bad.csv"), tmp_path / "out2")


def test_bad_input_and_a_second_model_on_the_same_workdir_are_user_errors(shared_encoder, run_dir, slide, tmp_path,
                                                                          monkeypatch):
    with pytest.raises(UserError, match="config.input=.*no such file or folder"):
        embed_mode.validate(_config(run_dir, tmp_path / "missing"))
    (tmp_path / "tile.png").write_bytes(b"")
    with pytest.raises(UserError, match="unknown extension '.png'; give a folder of tiles, a .csv"):
        embed_mode.validate(_config(run_dir, tmp_path / "tile.png"))
    (tmp_path / "not_a_run").mkdir()
    with pytest.raises(UserError, match="neither a training workdir"):
        embed_mode.validate(_config(tmp_path / "not_a_run", slide))
    with pytest.raises(UserError, match="config.normalizer_reference"):
        embed_mode.validate(_config(run_dir, slide, normalizer="macenko"))
    with pytest.raises(UserError, match="needs --workdir"):
        embed_mode.run(_config(run_dir, slide), None)
    (tmp_path / "one.csv").write_text("path\n" + str(tmp_path / "tile.png") + "\n")
    embed_mode.run(_config(run_dir, tmp_path / "one.csv"), tmp_path / "out")  # an empty file: corrupt, not fatal
    other = shutil.copytree(run_dir, tmp_path / "other_run")
    monkeypatch.undo()  # the real loader: another run is another model
    with pytest.raises(UserError, match="holds embeddings of .*another model: use another --workdir"):
        embed_mode.run(_config(other, tmp_path / "one.csv"), tmp_path / "out")


def test_each_process_takes_every_other_shard_and_process_0_sums_them_all(shared_encoder, run_dir, slide, tmp_path,
                                                                          monkeypatch):
    from jax.experimental import multihost_utils

    config = _config(run_dir, slide, level=1, min_tissue=0.0)  # 40 tiles, 5 shards
    monkeypatch.setattr(embed_mode.jax, "process_count", lambda: 2)
    monkeypatch.setattr(multihost_utils, "sync_global_devices", lambda name: None)
    monkeypatch.setattr(embed_mode.jax, "process_index", lambda: 1)
    second = embed_mode.run(config, tmp_path / "out")
    shard_dir = tmp_path / "out" / embed_mode.SHARDS
    assert sorted(path.name[:16] for path in shard_dir.glob("*.parquet")) == ["embeddings-00001", "embeddings-00003"]
    assert second["this_run"]["tiles_embedded"] == 16 and not (tmp_path / "out" / embed_mode.SUMMARY).exists()
    monkeypatch.setattr(embed_mode.jax, "process_index", lambda: 0)
    first = embed_mode.run(config, tmp_path / "out")
    assert first["this_run"]["shards_written"] == 3 and first["shards_finished"] == 5
    assert first["tiles_embedded"] == 40 == len(set(zip(*(_rows(tmp_path / "out")[key] for key in ("y", "x")))))
