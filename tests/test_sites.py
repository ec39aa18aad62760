"""Evaluation sites: deterministic uint8 transforms, NaN-free on blank tiles, outside the training families."""

import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
from hypothesis import given, settings
from scipy import ndimage

from data_pipelines import tiling
from data_pipelines import sites

TRANSFORMS = tuple(name for name in sites.SITE_NAMES if name != "source")


@pytest.fixture(scope="module")
def tissue_tile() -> np.ndarray:
    """A 64 px H&E tile from the embedded slide (dermis and epidermis)."""
    return tiling.read_slide_region(tiling.locate_cmu_slide())[1700:1764, 1000:1064]


def _optical_density(tile: np.ndarray) -> np.ndarray:
    return -np.log10((tile.reshape(-1, 3).astype(np.float64) + 1.0) / 256.0)


def _od_linear_misfit(before: np.ndarray, after: np.ndarray) -> float:
    """Mean |error| in grey levels of the best 3x3 linear map OD(before) -> OD(after), mapped back to intensity.

    Stain-vector rotation/scaling and stain-concentration scaling are such maps, so they fit it up to rounding.
    """
    od_in, od_out = _optical_density(before), _optical_density(after)
    matrix, *_ = np.linalg.lstsq(od_in, od_out, rcond=None)
    predicted = np.clip(256.0 * 10.0 ** (-(od_in @ matrix)) - 1.0, 0.0, 255.0)
    return float(np.abs(predicted - after.reshape(-1, 3)).mean())


def _training_like_stain_jitter(tile: np.ndarray) -> np.ndarray:
    """Control: a 5-degree OD rotation with per-channel scaling, rounded to uint8 like the sites."""
    angle = np.radians(5.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), np.cos(angle), 0.0], [0.0, 0.0, 1.0]])
    od_out = _optical_density(tile) @ (rotation * np.array([1.15, 0.9, 1.05]))
    return np.clip(np.rint(256.0 * 10.0 ** (-od_out) - 1.0), 0, 255).astype(np.uint8).reshape(tile.shape)


def test_names_and_ids():
    assert sites.SITE_NAMES[0] == "source" and len(sites.SITE_NAMES) >= 5
    assert sites.ALL_SITE_NAMES == sites.SITE_NAMES + (sites.IHC_SITE,)
    assert [sites.site_id(name) for name in sites.ALL_SITE_NAMES] == list(range(len(sites.ALL_SITE_NAMES)))
    assert sites.site_id(sites.IHC_SITE) == len(sites.SITE_NAMES)


def test_unknown_and_ihc_sites_raise(tissue_tile):
    with pytest.raises(ValueError, match="Unknown site 'nope'"):
        sites.render_site("nope", tissue_tile)
    with pytest.raises(ValueError, match="not a transform"):
        sites.render_site(sites.IHC_SITE, tissue_tile)
    with pytest.raises(ValueError, match="uint8"):
        sites.render_site("scanner_tone", tissue_tile.astype(np.float32))


@pytest.mark.parametrize("name", sites.SITE_NAMES)
def test_deterministic_uint8_same_shape(name, tissue_tile):
    first, second = sites.render_site(name, tissue_tile), sites.render_site(name, tissue_tile)
    assert first.dtype == np.uint8 and first.shape == tissue_tile.shape
    np.testing.assert_array_equal(first, second)


def test_source_is_identity_and_a_copy(tissue_tile):
    out = sites.render_site("source", tissue_tile)
    np.testing.assert_array_equal(out, tissue_tile)
    assert not np.shares_memory(out, tissue_tile)


@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_changes_the_tile(name, tissue_tile):
    diff = np.abs(sites.render_site(name, tissue_tile).astype(int) - tissue_tile.astype(int)).mean()
    assert diff > 4.0, f"{name} moves pixels by only {diff:.2f} grey levels on average"


@pytest.mark.parametrize("name", ("scanner_tone", "lab_shift", "jpeg_blur"))
def test_outside_the_od_linear_training_family(name, tissue_tile):
    """No stain-matrix/concentration change reproduces these sites; the control (training-like jitter) fits."""
    control = _od_linear_misfit(tissue_tile, _training_like_stain_jitter(tissue_tile))
    misfit = _od_linear_misfit(tissue_tile, sites.render_site(name, tissue_tile))
    assert misfit > 3.0 * control and misfit > 3.0, (name, misfit, control)


def test_stain_transfer_is_far_from_the_source_stains(tissue_tile):
    """The implied OD map rotates colours well beyond small training jitter (not a near-identity)."""
    od_in, od_out = _optical_density(tissue_tile), _optical_density(sites.render_site("stain_transfer", tissue_tile))
    matrix, *_ = np.linalg.lstsq(od_in, od_out, rcond=None)
    haematoxylin = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
    mapped = haematoxylin @ matrix
    angle = np.degrees(np.arccos(mapped @ haematoxylin / np.linalg.norm(mapped)))
    assert angle > 10.0


def test_jpeg_blur_removes_high_frequencies(tissue_tile):
    def detail(tile):
        return ndimage.laplace(tile.astype(np.float64).mean(-1)).var()

    assert detail(sites.render_site("jpeg_blur", tissue_tile)) < 0.5 * detail(tissue_tile)


@pytest.mark.parametrize("value", (0, 255))
@pytest.mark.parametrize("name", sites.SITE_NAMES)
def test_blank_tiles_do_not_crash(name, value):
    out = sites.render_site(name, np.full((16, 16, 3), value, np.uint8))
    assert out.dtype == np.uint8 and out.shape == (16, 16, 3)
    if value == 255 and name in ("source", "stain_transfer", "jpeg_blur"):
        assert out.min() >= 250  # glass stays glass


@settings(max_examples=25, deadline=None)
@given(hnp.arrays(np.uint8, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12).map(lambda s: s + (3,))))
def test_any_tile_renders_under_every_site(tile):
    for name in sites.SITE_NAMES:
        out = sites.render_site(name, tile)
        assert out.shape == tile.shape and out.dtype == np.uint8
