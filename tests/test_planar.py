"""Tests for lmc_jax/stain/planar.py: channel-first colour maths equal color.py's channel-last functions."""

import jax
import numpy as np
from skimage import color as skcolor

from lmc_jax.stain import color, planar


def test_lab_matches_color_and_skimage():
    rgb = np.random.default_rng(0).random((500, 3))
    lab = skcolor.rgb2lab(rgb[None])[0]
    with jax.enable_x64(True):
        np.testing.assert_allclose(planar.rgb_to_lab(rgb.T).T, lab, atol=1e-6)
        np.testing.assert_allclose(planar.lab_to_rgb(lab.T).T, skcolor.lab2rgb(lab[None])[0], atol=1e-6)
    rgb32 = rgb.astype(np.float32)
    np.testing.assert_allclose(planar.rgb_to_lab(rgb32.T).T, color.rgb_to_lab(rgb32), atol=2e-3)
    wild = np.array([[50.0, 120.0, -120.0], [0.0, 0.0, 0.0], [100.0, 0.0, 0.0], [10.0, -80.0, 110.0]], np.float32)
    np.testing.assert_allclose(planar.lab_to_rgb(wild.T).T, color.lab_to_rgb(wild), atol=1e-5)


def test_apply_matrix_matches_color_and_pixels_round_trip():
    x = np.random.default_rng(1).random((3, 4, 5)).astype(np.float32)
    matrix = color.HED_FROM_RGB
    channel_last = color.apply_matrix(np.moveaxis(x, 0, -1), matrix)
    np.testing.assert_allclose(planar.apply_matrix(x, matrix), np.moveaxis(channel_last, -1, 0), rtol=1e-5, atol=1e-6)
    image = np.random.default_rng(2).integers(0, 256, (6, 7, 3), dtype=np.uint8)
    pixels = planar.pixels(image)
    assert pixels.shape == (3, 42)
    np.testing.assert_array_equal(pixels[:, 8], image[1, 1])
    np.testing.assert_array_equal(planar.to_image(pixels, image), image)
