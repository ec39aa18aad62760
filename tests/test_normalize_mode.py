"""Tests for lmc_jax/modes/normalize.py (mode=normalize): a folder in, same names out, input untouched, log."""

import hashlib
import json
import logging
import pathlib

import imagecodecs
import numpy as np
import pytest
import tifffile
from PIL import Image

from configs import normalize as normalize_config
from lmc_jax.errors import UserError
from lmc_jax.modes import normalize as normalize_mode
from lmc_jax.stain import macenko, reinhard, robust, tile_io
from tests import stain_tiles


def _snapshot(folder: pathlib.Path) -> dict[str, tuple[str, int]]:
    """Every file under `folder` with its content hash and modification time."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    """Tiles of two sizes and three formats, a blank tile, a corrupt PNG, a text file and a sub-folder."""
    tiles, reference = stain_tiles.slide_tiles(size=64)
    root = tmp_path_factory.mktemp("normalize")
    tiles_dir = root / "in"
    (tiles_dir / "sub").mkdir(parents=True)
    for index, tile in enumerate(tiles[:5]):
        Image.fromarray(tile).save(tiles_dir / f"tile{index}.png")
    Image.fromarray(tiles[5][:40, :48]).save(tiles_dir / "small.jpg", quality=95)
    Image.fromarray(tiles[4]).save(tiles_dir / "scan.tif")
    Image.fromarray(np.full((64, 64, 3), 250, np.uint8)).save(tiles_dir / "glass.png")
    (tiles_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (tiles_dir / "notes.txt").write_text("not a tile")
    Image.fromarray(tiles[0]).save(tiles_dir / "sub" / "deep.png")
    Image.fromarray(reference).save(root / "reference.png")
    return root


def _config(folder: pathlib.Path, output: str, **overrides):
    config = normalize_config.get_config()
    config.reference = str(folder / "reference.png")
    config.input = str(folder / "in")
    config.output = str(folder / output)
    config.batch_size = 4
    for key, value in overrides.items():
        config[key] = value
    return config


def test_normalizes_a_folder_and_leaves_the_input_untouched(folder, caplog):
    before = _snapshot(folder / "in")
    with caplog.at_level(logging.INFO):
        summary = normalize_mode.run(_config(folder, "out"))
    assert _snapshot(folder / "in") == before
    out = folder / "out"
    assert summary["counts"] == {"files": 10, "normalized": 7, "flagged": 1, "skipped": 2, "converted": 0,
                                 "alpha_kept": 0, "alpha_dropped": 0}
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["tile0.png", "tile1.png", "tile2.png", "tile3.png", "tile4.png", "small.jpg", "scan.tif", "glass.png",
         normalize_mode.LOG_NAME])
    # PNG is lossless: the file holds the batched transform of the decoded tile. The mode's batch is another compiled
    # program than this one-tile call, so a value on a rounding boundary may land one level apart (seen with the
    # suite's cheap XLA compile: 1 of 12,288); a lossy write would differ in thousands.
    params = macenko.fit(np.asarray(Image.open(folder / "reference.png")))
    tile = np.asarray(Image.open(folder / "in" / "tile2.png"))
    expected, _ = macenko.transform(tile[None], params)
    written = np.asarray(Image.open(out / "tile2.png"), int)
    difference = np.abs(written - np.asarray(expected[0], int))
    assert difference.max() <= 1 and np.count_nonzero(difference) <= 10, (difference.max(), np.count_nonzero(difference))
    assert np.abs(np.asarray(Image.open(out / "tile2.png"), int) - tile).mean() > 2.0
    assert np.asarray(Image.open(out / "small.jpg")).shape == (40, 48, 3)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "scan.tif")),
                                  np.asarray(macenko.transform(np.asarray(Image.open(folder / "in" / "scan.tif"))[None],
                                                               params)[0][0]))
    assert (out / "glass.png").read_bytes() == (folder / "in" / "glass.png").read_bytes()
    log = json.loads((out / normalize_mode.LOG_NAME).read_text())
    assert log["flagged"] == [{"file": "glass.png", "flag": robust.FLAG_NAMES[robust.NO_TISSUE]}]
    assert {entry["file"] for entry in log["skipped"]} == {"broken.png", "notes.txt"}
    assert "cannot decode" in next(e["reason"] for e in log["skipped"] if e["file"] == "broken.png")
    assert log["params"]["method"] == "macenko" and log["method_config"]["alpha"] == 1.0
    skipped_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped ")]
    assert len(skipped_lines) == 2 and any("notes.txt: not an image file" in line for line in skipped_lines)
    assert any("2 skipped" in r.getMessage() and "7 normalized" in r.getMessage() for r in caplog.records)


def test_recursive_mirrors_sub_folders_and_a_log_is_a_reference(folder):
    first = normalize_mode.run(_config(folder, "out_recursive", method="reinhard", recursive=True))
    assert first["counts"]["normalized"] == 8 and (folder / "out_recursive" / "sub" / "deep.png").is_file()
    again = normalize_mode.run(_config(folder, "out_again", method="reinhard", recursive=True,
                                       reference=first["log"]))
    assert again["params"] == first["params"]
    for name in ("tile0.png", "sub/deep.png"):
        assert (folder / "out_again" / name).read_bytes() == (folder / "out_recursive" / name).read_bytes()


def test_existing_outputs_need_overwrite(folder):
    normalize_mode.run(_config(folder, "out_twice", method="reinhard"), workdir=str(folder / "unused_workdir"))
    assert not (folder / "unused_workdir").exists()
    with pytest.raises(normalize_mode.NormalizeError, match="config.overwrite=False: 8 output file"):
        normalize_mode.run(_config(folder, "out_twice", method="reinhard"))
    again = normalize_mode.run(_config(folder, "out_twice", method="reinhard", overwrite=True))
    assert again["counts"]["normalized"] == 7


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mode="train"), "config.mode='train'"),
        (dict(method="spams"), "config.method='spams'"),
        (dict(reference="missing.png"), "config.reference="),
        (dict(input="missing_dir"), "config.input="),
        (dict(output="in/sub"), "must not be, contain or lie inside config.input"),
        (dict(output=""), "config.output=''"),
        (dict(batch_size=0), "config.batch_size=0"),
        (dict(max_batch_pixels=0), "config.max_batch_pixels=0"),
        (dict(jpeg_quality=0), "config.jpeg_quality=0"),
    ],
)
def test_validate_names_the_bad_key(folder, overrides, message):
    config = _config(folder, "never_written")
    for key, value in overrides.items():
        config[key] = str(folder / value) if key in ("reference", "input", "output") and value else value
    with pytest.raises(normalize_mode.NormalizeError, match=message.replace("(", r"\(")):
        normalize_mode.validate(config)
    assert issubclass(normalize_mode.NormalizeError, UserError)
    assert not (folder / "never_written").exists()


def test_method_settings_and_reference_errors(folder):
    config = _config(folder, "never_written")
    config.macenko.alpha = 80.0
    with pytest.raises(normalize_mode.NormalizeError, match=r"config.macenko: MacenkoConfig.alpha=80"):
        normalize_mode.validate(config)
    glass = _config(folder, "never_written", reference=str(folder / "in" / "glass.png"))
    with pytest.raises(normalize_mode.NormalizeError, match="glass.png.*no_tissue"):
        normalize_mode.run(glass)
    broken = _config(folder, "never_written", reference=str(folder / "in" / "broken.png"))
    with pytest.raises(normalize_mode.NormalizeError, match="cannot decode"):
        normalize_mode.run(broken)
    assert not (folder / "never_written").exists()


@pytest.fixture(scope="module")
def odd_folder(folder, tmp_path_factory) -> pathlib.Path:
    """Tiles that are not plain 8-bit RGB: RGBA PNG and TIFF (and a PNG named .jpg), 16-bit RGB PNG and TIFF,
    grey and palette PNG."""
    tiles, _ = stain_tiles.slide_tiles(size=64)
    root = tmp_path_factory.mktemp("odd")
    (root / "in").mkdir()
    alpha = np.random.default_rng(0).integers(0, 256, (64, 64, 1), dtype=np.uint8)
    Image.fromarray(np.concatenate([tiles[0], alpha], axis=-1)).save(root / "in" / "rgba.png")
    Image.fromarray(np.concatenate([tiles[1], alpha], axis=-1)).save(root / "in" / "rgba.tif")
    Image.fromarray(np.concatenate([tiles[5], alpha], axis=-1)).save(root / "in" / "masked.jpg", format="PNG")
    deep = tiles[2].astype(np.uint16) * 257 + np.random.default_rng(1).integers(-128, 129, (64, 64, 3))
    deep = np.clip(deep, 0, 65535).astype(np.uint16)
    (root / "in" / "deep.png").write_bytes(imagecodecs.png_encode(deep))
    tifffile.imwrite(root / "in" / "deep.tif", deep, photometric="rgb")
    Image.fromarray(tiles[3][..., 0]).save(root / "in" / "grey.png")
    Image.fromarray(tiles[4]).convert("P").save(root / "in" / "palette.png")
    np.save(root / "deep.npy", deep)
    (root / "reference.png").write_bytes((folder / "reference.png").read_bytes())
    return root


def test_alpha_is_kept_byte_for_byte(odd_folder):
    summary = normalize_mode.run(_config(odd_folder, "out_alpha", method="reinhard"))
    assert summary["alpha_kept"] == ["rgba.png", "rgba.tif"] and summary["counts"]["alpha_kept"] == 2
    assert summary["alpha_dropped"] == [{"file": "masked.jpg", "reason": ".jpg cannot store alpha"}]
    assert Image.open(odd_folder / "out_alpha" / "masked.jpg").format == "JPEG"
    params = normalize_mode._load_params(_config(odd_folder, "unused", method="reinhard"), reinhard.ReinhardConfig())
    for name in ("rgba.png", "rgba.tif"):
        source, written = (np.asarray(Image.open(odd_folder / d / name)) for d in ("in", "out_alpha"))
        assert written.shape == (64, 64, 4), name
        np.testing.assert_array_equal(written[..., 3], source[..., 3])
        expected, _ = reinhard.transform(np.ascontiguousarray(source[None, ..., :3]), params)
        np.testing.assert_array_equal(written[..., :3], np.asarray(expected[0]))


def test_16bit_grey_and_palette_are_converted_and_counted(odd_folder):
    summary = normalize_mode.run(_config(odd_folder, "out_deep", method="reinhard"))
    log = json.loads((odd_folder / "out_deep" / normalize_mode.LOG_NAME).read_text())
    conversions = {entry["file"]: entry["conversion"] for entry in log["converted"]}
    assert conversions == {
        "deep.png": "16-bit RGB scaled to 8 bits (rounded)", "deep.tif": "16-bit RGB scaled to 8 bits (rounded)",
        "grey.png": "grayscale (L) converted to RGB", "palette.png": "palette (P) converted to RGB",
    }
    assert summary["counts"]["converted"] == 4 and summary["counts"]["normalized"] == 6
    assert log["flagged"] == [{"file": "grey.png", "flag": "degenerate"}]  # one grey channel: no two stains
    deep = np.load(odd_folder / "deep.npy")
    rounded = np.round(deep / 257.0).astype(np.uint8)  # not the high byte (deep >> 8), which Pillow returns
    assert (rounded != deep >> 8).any()
    params = normalize_mode._load_params(_config(odd_folder, "unused", method="reinhard"), reinhard.ReinhardConfig())
    expected, _ = reinhard.transform(rounded[None], params)
    for name in ("deep.png", "deep.tif"):
        np.testing.assert_array_equal(tile_io.read_image(odd_folder / "in" / name).rgb, rounded)
        np.testing.assert_array_equal(np.asarray(Image.open(odd_folder / "out_deep" / name)), np.asarray(expected[0]))


def test_short_groups_are_padded_to_small_buckets(folder, monkeypatch):
    shapes = []
    transform = macenko.transform

    def spy(batch, *args, **kwargs):
        shapes.append(batch.shape[:3])
        return transform(batch, *args, **kwargs)

    monkeypatch.setattr(macenko, "transform", spy)
    normalize_mode.run(_config(folder, "out_bucket", batch_size=64))
    # seven 64x64 tiles -> one call of 8 (not 64); the 40x48 JPEG alone -> 1
    assert sorted(shapes) == [(1, 40, 48), (8, 64, 64)]
    shapes.clear()
    normalize_mode.run(_config(folder, "out_budget", batch_size=64, max_batch_pixels=2 * 64 * 64))
    assert sorted(shapes) == [(1, 40, 48), (1, 64, 64), (2, 64, 64), (2, 64, 64), (2, 64, 64)]
    assert [normalize_mode.bucket(n, 64) for n in (1, 2, 3, 5, 33, 64)] == [1, 2, 4, 8, 64, 64]
    assert normalize_mode.group_size((4000, 4000, 3), _config(folder, "unused")) == 1
