"""Tests for lmc_jax/stain/color.py: OD round trip, HED and Lab against scikit-image, stain least squares."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import color as skcolor

from lmc_jax.stain import color


def _random_rgb(seed: int, shape: tuple[int, ...], dtype=np.float64) -> np.ndarray:
    """Random RGB in [0, 1] with exact black, white and primaries mixed in."""
    rgb = np.random.default_rng(seed).random(shape + (3,))
    rgb.reshape(-1, 3)[:5] = [[0, 0, 0], [1, 1, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1]]
    return rgb.astype(dtype)


def test_od_round_trip_and_bounds():
    rgb = np.random.default_rng(0).uniform(1e-3, 1.0, (4, 5, 3)).astype(np.float32)
    od = color.rgb_to_od(rgb)
    np.testing.assert_allclose(color.od_to_rgb(od), rgb, rtol=1e-5)
    extremes = color.rgb_to_od(jnp.array([[0.0, 1.0, 2.0]]))
    assert np.all(np.isfinite(extremes)) and np.all(extremes >= 0)
    np.testing.assert_allclose(extremes, [[-np.log(color.OD_EPS), 0.0, 0.0]], rtol=1e-6)
    assert np.all(np.isfinite(color.od_to_rgb(jnp.array([-1e4, 0.0, 1e4]))))


def test_uint8_input_is_scaled():
    pixels = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        color.rgb_to_od(pixels), color.rgb_to_od(pixels.astype(np.float32) / 255.0), atol=1e-6
    )
    np.testing.assert_allclose(
        color.rgb_to_lab(pixels), skcolor.rgb2lab(pixels), atol=1e-3
    )


def test_integer_types_other_than_uint8_are_refused():
    with pytest.raises(TypeError, match="uint8"):
        color.rgb_to_od(np.zeros((2, 3), np.int32))


def test_hed_constants_match_skimage():
    np.testing.assert_array_equal(color.RGB_FROM_HED, skcolor.rgb_from_hed)
    np.testing.assert_allclose(color.HED_FROM_RGB, skcolor.hed_from_rgb, rtol=1e-12)


def test_hed_matches_skimage_float64():
    rgb = _random_rgb(2, (6, 7))
    with jax.enable_x64(True):
        hed = color.rgb_to_hed(rgb)
        assert hed.dtype == jnp.float64
        np.testing.assert_allclose(hed, skcolor.rgb2hed(rgb), atol=1e-5, rtol=0)
        stains = np.random.default_rng(3).uniform(0.0, 0.3, (6, 7, 3))
        np.testing.assert_allclose(color.hed_to_rgb(stains), skcolor.hed2rgb(stains), atol=1e-5, rtol=0)


def test_hed_matches_skimage_float32():
    rgb = _random_rgb(4, (6, 7))
    expected = skcolor.rgb2hed(rgb)
    hed = color.rgb_to_hed(rgb.astype(np.float32))
    assert hed.dtype == jnp.float32
    np.testing.assert_allclose(hed, expected, atol=1e-5 * np.abs(expected).max(), rtol=1e-5)
    np.testing.assert_allclose(color.hed_to_rgb(expected.astype(np.float32)), skcolor.hed2rgb(expected), atol=1e-5)


def test_lab_matches_skimage():
    rgb = _random_rgb(5, (8, 9))
    lab = skcolor.rgb2lab(rgb)
    odd_lab = np.array([[50.0, 120.0, -120.0], [10.0, -80.0, 110.0], [0.0, 0.0, 0.0], [100.0, 0.0, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about the out-of-gamut rows
        odd_rgb = skcolor.lab2rgb(odd_lab)
    with jax.enable_x64(True):
        np.testing.assert_allclose(color.rgb_to_lab(rgb), lab, atol=1e-4, rtol=0)
        np.testing.assert_allclose(color.lab_to_rgb(lab), skcolor.lab2rgb(lab), atol=1e-4, rtol=0)
        np.testing.assert_allclose(color.lab_to_rgb(odd_lab), odd_rgb, atol=1e-4, rtol=0)
    np.testing.assert_allclose(color.rgb_to_lab(rgb.astype(np.float32)), lab, atol=1e-3, rtol=0)
    np.testing.assert_allclose(color.lab_to_rgb(lab.astype(np.float32)), rgb, atol=1e-3, rtol=0)


def test_functions_jit_and_stay_finite_on_extremes():
    extremes = jnp.array([[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 0.0]]], jnp.float32)
    for fn in (color.rgb_to_od, color.rgb_to_hed, color.rgb_to_lab):
        out = jax.jit(fn)(extremes)
        np.testing.assert_allclose(out, fn(extremes), rtol=1e-6, atol=1e-6)
        assert np.all(np.isfinite(out))
    wild = jnp.array([[-1e3, 0.0, 1e3], [1e3, -1e3, 1e3]], jnp.float32)
    for fn in (color.od_to_rgb, color.hed_to_rgb, color.lab_to_rgb):
        out = jax.jit(fn)(wild)
        assert np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


def test_default_stain_matrix_has_unit_positive_rows():
    np.testing.assert_allclose(np.linalg.norm(color.DEFAULT_STAIN_MATRIX, axis=1), 1.0, atol=1e-4)
    assert np.all(color.DEFAULT_STAIN_MATRIX > 0)


def test_concentrations_recover_mixtures_batched():
    conc = np.random.default_rng(6).uniform(0.0, 2.0, (2, 3, 4, 2)).astype(np.float32)
    od = color.od_from_concentrations(conc, color.DEFAULT_STAIN_MATRIX)
    assert od.shape == (2, 3, 4, 3)
    np.testing.assert_allclose(od, conc @ color.DEFAULT_STAIN_MATRIX, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(color.concentrations(od, color.DEFAULT_STAIN_MATRIX), conc, rtol=1e-4, atol=1e-5)


def test_concentrations_are_least_squares():
    od = np.random.default_rng(7).uniform(0.0, 1.5, (50, 3))
    with jax.enable_x64(True):
        conc = color.concentrations(od, color.DEFAULT_STAIN_MATRIX)
    expected, *_ = np.linalg.lstsq(color.DEFAULT_STAIN_MATRIX.T, od.T, rcond=None)
    np.testing.assert_allclose(conc, expected.T, atol=1e-10)
