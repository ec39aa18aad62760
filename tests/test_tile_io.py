"""lmc_jax/stain/tile_io.py: decoding keeps alpha and names every conversion (16-bit rounded, grey, palette)."""

import numpy as np
import pytest
from PIL import Image

from lmc_jax.stain import tile_io


def test_to_8bit_rounds_instead_of_taking_the_high_byte():
    values = np.array([0, 128, 129, 255, 257 * 10 + 129, 65535], np.uint16)
    np.testing.assert_array_equal(tile_io.to_8bit(values), [0, 0, 1, 1, 11, 255])  # high byte: 0 0 0 0 10 255


def test_grey_16bit_and_grey_alpha(tmp_path):
    grey = np.array([[0, 1000], [40000, 65535]], np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")  # Pillow mode I;16, skipped as uint16 before
    decoded = tile_io.read_image(tmp_path / "grey16.png")
    assert decoded.conversion == "16-bit grayscale scaled to 8 bits (rounded)" and decoded.alpha is None
    np.testing.assert_array_equal(decoded.rgb, np.repeat(np.round(grey / 257.0).astype(np.uint8)[..., None], 3, -1))
    la = np.random.default_rng(0).integers(0, 256, (3, 5, 2), dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    decoded = tile_io.read_image(tmp_path / "la.png")
    assert decoded.conversion == "grayscale (LA) converted to RGB"
    np.testing.assert_array_equal(decoded.alpha, la[..., 1])
    np.testing.assert_array_equal(decoded.rgb, np.repeat(la[..., :1], 3, -1))


def test_alpha_round_trip_and_jpeg_refuses_it(tmp_path):
    rgba = np.random.default_rng(1).integers(0, 256, (4, 6, 4), dtype=np.uint8)
    for name in ("a.png", "a.tif"):
        tile_io.write_rgb(tmp_path / name, rgba[..., :3], 95, rgba[..., 3])
        decoded = tile_io.read_image(tmp_path / name)
        np.testing.assert_array_equal(decoded.rgb, rgba[..., :3])
        np.testing.assert_array_equal(decoded.alpha, rgba[..., 3])
        assert decoded.conversion is None and tile_io.keeps_alpha(tmp_path / name)
    assert not tile_io.keeps_alpha(tmp_path / "a.jpg")
    with pytest.raises(ValueError, match="JPEG cannot store an alpha channel"):
        tile_io.write_rgb(tmp_path / "a.jpg", rgba[..., :3], 95, rgba[..., 3])
