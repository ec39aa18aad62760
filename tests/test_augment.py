"""Tests for lmc_jax/stain/augment.py: view shapes, determinism, geometry, each stain knob, NaN safety."""

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmc_jax.stain import augment, color

OFF = augment.StainAugConfig(*([0.0] * 8))
STRONGEST = augment.StainAugConfig(1.5, 0.99, 0.99, 2.0, 0.99, 0.99, 0.99, 0.99)


def _only(**strengths: float) -> augment.StainAugConfig:
    """A config with every knob off except the named ones."""
    return dataclasses.replace(OFF, **strengths)


def _tiles(seed: int, batch: int = 4, size: int = 12) -> np.ndarray:
    """Random uint8 tiles [batch, size, size, 3]."""
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _stained_tiles(seed: int, conc_range: tuple[float, float], eosin: bool = True, batch: int = 4) -> np.ndarray:
    """Float tiles [batch, 8, 8, 3] that are exact mixtures of the default H and E stains."""
    rng = np.random.default_rng(seed)
    conc = rng.uniform(*conc_range, (batch, 8, 8, 2))
    if not eosin:
        conc[..., 1] = 0.0
    return np.exp(-conc @ color.DEFAULT_STAIN_MATRIX).astype(np.float32)


def _views(key: int, tiles, stain, num_views: int = 1, crop_size: int | None = None) -> np.ndarray:
    crop = tiles.shape[1] if crop_size is None else crop_size
    return np.asarray(
        augment.make_views(jax.random.key(key), jnp.asarray(tiles), num_views=num_views, crop_size=crop, stain=stain)
    )


def _symmetries(image: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/90° rotations of a square image [H, W, C]."""
    rotations = [np.rot90(image, k) for k in range(4)]
    return rotations + [r[:, ::-1] for r in rotations]


def test_shapes_dtype_range():
    views = _views(0, _tiles(0), augment.StainAugConfig(), num_views=3, crop_size=8)
    assert views.shape == (3, 4, 8, 8, 3) and views.dtype == np.float32
    assert np.all(np.isfinite(views)) and views.min() >= 0.0 and views.max() <= 1.0


def test_same_key_same_views_other_key_other_views():
    tiles, cfg = _tiles(1), augment.StainAugConfig()
    first = _views(3, tiles, cfg, num_views=2, crop_size=8)
    np.testing.assert_array_equal(first, _views(3, tiles, cfg, num_views=2, crop_size=8))
    assert not np.allclose(first, _views(4, tiles, cfg, num_views=2, crop_size=8))
    assert not np.allclose(first[0], first[1])


def test_geometric_views_are_crops_under_a_dihedral_symmetry():
    tiles = _tiles(2, batch=6, size=9)
    crop = 5
    views = _views(5, tiles, None, num_views=2, crop_size=crop)
    for view_index in range(2):
        for example in range(6):
            candidates = [
                s
                for y in range(9 - crop + 1)
                for x in range(9 - crop + 1)
                for s in _symmetries(tiles[example, y : y + crop, x : x + crop].astype(np.float32) / 255.0)
            ]
            assert any(np.allclose(views[view_index, example], c, atol=1e-7) for c in candidates)


def test_all_eight_symmetries_occur():
    tile = _tiles(3, batch=1, size=6)
    batch = np.repeat(tile, 64, axis=0)
    views = _views(6, batch, None)[0]
    options = _symmetries(tile[0].astype(np.float32) / 255.0)
    seen = {next(i for i, o in enumerate(options) if np.allclose(v, o, atol=1e-7)) for v in views}
    assert seen == set(range(8))


def test_geometric_views_keep_colour_statistics_and_stain_views_change_them():
    tiles = _tiles(4, batch=2, size=8)
    geometric = _views(7, tiles, None, num_views=2)
    stained = _views(7, tiles, augment.StainAugConfig(), num_views=2)
    for example in range(2):
        reference = np.sort(tiles[example].reshape(-1, 3) / 255.0, axis=0)
        for view in range(2):
            np.testing.assert_allclose(np.sort(geometric[view, example].reshape(-1, 3), axis=0), reference, atol=1e-7)
            assert np.abs(np.sort(stained[view, example].reshape(-1, 3), axis=0) - reference).max() > 0.02


def test_result_independent_of_batch_size_and_position():
    tiles = _tiles(5, batch=16)
    cfg = augment.StainAugConfig()
    full = _views(8, tiles, cfg, num_views=2, crop_size=8)
    # equal up to float rounding: XLA vectorises exp/log differently for other batch sizes
    np.testing.assert_allclose(_views(8, tiles[:8], cfg, num_views=2, crop_size=8), full[:, :8], atol=1e-6)
    swapped = tiles.copy()
    swapped[[2, 9]] = swapped[[9, 2]]
    # a different tile at the same position gets the same geometry and colour draws
    np.testing.assert_array_equal(_views(8, swapped, cfg, num_views=2, crop_size=8)[:, 3], full[:, 3])


def test_zero_strengths_equal_geometric_views_and_tiny_ones_nearly():
    tiles = np.maximum(_tiles(6), 1)  # OD of 0 is capped, so start at one uint8 step
    geometric = _views(9, tiles, None, num_views=2, crop_size=9)
    np.testing.assert_array_equal(_views(9, tiles, OFF, num_views=2, crop_size=9), geometric)
    tiny = augment.StainAugConfig(*([1e-6] * 8))
    np.testing.assert_allclose(_views(9, tiles, tiny, num_views=2, crop_size=9), geometric, atol=1e-4)


@pytest.mark.parametrize("value", [0, 255])
def test_black_and_white_tiles_stay_finite(value):
    tiles = np.full((3, 8, 8, 3), value, np.uint8)
    for cfg in (augment.StainAugConfig(), STRONGEST):
        views = _views(10, tiles, cfg, num_views=2)
        assert np.all(np.isfinite(views)) and views.min() >= 0.0 and views.max() <= 1.0


def test_white_background_stays_white_under_stain_jitter():
    stain_only = _only(stain_vector_angle=0.15, stain_vector_scale=0.15, concentration_scale=0.3,
                       concentration_shift=0.1, hed_jitter=0.05)
    views = _views(11, np.full((4, 8, 8, 3), 255, np.uint8), stain_only, num_views=2)
    np.testing.assert_allclose(views, 1.0, atol=1e-6)


def test_flat_tile_stays_flat():
    views = _views(12, np.full((3, 8, 8, 3), (200, 120, 160), np.uint8), augment.StainAugConfig(), num_views=2)
    assert np.all(np.isfinite(views))
    np.testing.assert_allclose(views, np.broadcast_to(views[:, :, :1, :1], views.shape), atol=1e-6)
    assert np.abs(views - np.array([200, 120, 160]) / 255.0).max() > 0.01


def test_concentration_scale_multiplies_each_stain():
    tiles = _stained_tiles(13, (0.2, 1.0))
    strength = 0.3
    geometric = _views(14, tiles, None)[0]
    scaled = _views(14, tiles, _only(concentration_scale=strength))[0]
    ratio = color.concentrations(color.rgb_to_od(scaled), color.DEFAULT_STAIN_MATRIX) / color.concentrations(
        color.rgb_to_od(geometric), color.DEFAULT_STAIN_MATRIX
    )
    per_example = np.asarray(ratio).reshape(4, -1, 2)
    assert per_example.std(axis=1).max() < 1e-3
    alpha = per_example.mean(axis=1)
    assert np.all(np.abs(alpha - 1.0) <= strength + 1e-4) and alpha.std() > 0.01


def test_hed_jitter_is_affine_per_channel():
    tiles = _stained_tiles(15, (0.5, 1.5))
    strength = 0.02
    geometric = _views(16, tiles, None)[0]
    jittered = _views(16, tiles, _only(hed_jitter=strength))[0]

    def hed(images: np.ndarray) -> np.ndarray:
        return np.asarray(color.rgb_to_od(images) / color.HED_LOG_ADJUST) @ color.HED_FROM_RGB

    before, after = hed(geometric).reshape(4, -1, 3), hed(jittered).reshape(4, -1, 3)
    for example in range(4):
        for channel in range(3):
            x, y = before[example, :, channel], after[example, :, channel]
            slope, intercept = np.polyfit(x, y, 1)
            assert np.abs(y - (slope * x + intercept)).max() < 1e-4
            assert abs(slope - 1.0) <= strength + 1e-3 and abs(intercept) <= strength + 1e-4
    assert np.abs(after - before).max() > 1e-3


def test_stain_vector_angle_rotates_haematoxylin():
    tiles = _stained_tiles(17, (0.3, 1.5), eosin=False, batch=8)
    angle = 0.15
    geometric = np.asarray(color.rgb_to_od(_views(18, tiles, None)[0])).reshape(8, -1, 3)
    turned = np.asarray(color.rgb_to_od(_views(18, tiles, _only(stain_vector_angle=angle))[0])).reshape(8, -1, 3)
    np.testing.assert_allclose(np.linalg.norm(turned, axis=-1), np.linalg.norm(geometric, axis=-1), rtol=1e-4)
    unit = turned / np.linalg.norm(turned, axis=-1, keepdims=True)
    angles = np.arccos(np.clip(unit @ color.DEFAULT_STAIN_MATRIX[0], -1.0, 1.0))
    assert angles.std(axis=1).max() < 1e-3
    assert angles.max() <= angle + 1e-3 and angles.max() > angle / 4


@pytest.mark.parametrize("knob", ["brightness", "gamma", "contrast"])
def test_photometric_knobs(knob):
    tiles = np.random.default_rng(19).integers(70, 170, (4, 8, 8, 3), dtype=np.uint8)
    strength = 0.1
    before = _views(20, tiles, None)[0].reshape(4, -1)
    after = _views(20, tiles, _only(**{knob: strength}))[0].reshape(4, -1)
    if knob == "brightness":
        factors = after / before
    elif knob == "gamma":
        factors = np.log(after) / np.log(before)
    else:
        grey = (before.reshape(4, -1, 3).mean(axis=1) @ augment.GRAY_WEIGHTS)[:, None]
        factors = (after - grey) / np.where(np.abs(before - grey) > 0.05, before - grey, np.nan)
    factors = factors[:, ~np.isnan(factors).any(axis=0)]
    assert np.nanstd(factors, axis=1).max() < 1e-4
    factor = factors.mean(axis=1)
    assert np.all(np.abs(factor - 1.0) <= strength + 1e-5) and factor.std() > 1e-3


def test_config_from_configdict_and_validation():
    cd = ml_collections.ConfigDict({"hed_jitter": 0.02, "brightness": 0})
    cfg = augment.StainAugConfig.from_config(cd)
    assert cfg == dataclasses.replace(augment.StainAugConfig(), hed_jitter=0.02, brightness=0.0)
    assert hash(cfg) == hash(dataclasses.replace(cfg))
    assert augment.StainAugConfig.from_config({}) == augment.StainAugConfig()
    with pytest.raises(ValueError, match="hed_jiter"):
        augment.StainAugConfig.from_config({"hed_jiter": 0.1})
    for bad in ({"brightness": -0.1}, {"contrast": 1.0}, {"stain_vector_angle": 2.0}, {"gamma": float("nan")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            augment.StainAugConfig.from_config(bad)
    with pytest.raises(TypeError, match="gamma"):
        augment.StainAugConfig(gamma="0.1")


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="crop_size=13"):
        _views(0, _tiles(0), None, crop_size=13)
    with pytest.raises(ValueError, match="num_views=0"):
        _views(0, _tiles(0), None, num_views=0)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        augment.center_crop(jnp.zeros((2, 8, 8, 4), jnp.uint8), 4)


def test_center_crop():
    tiles = _tiles(21, batch=2, size=10)
    crop = np.asarray(augment.center_crop(tiles, 6))
    assert crop.dtype == np.float32
    np.testing.assert_allclose(crop, tiles[:, 2:8, 2:8] / 255.0, atol=1e-7)
    np.testing.assert_allclose(augment.center_crop(tiles.astype(np.float32) / 255.0, 6), crop, atol=1e-7)


@settings(max_examples=25, deadline=None)
@given(
    tiles=hnp.arrays(np.uint8, (2, 8, 8, 3)),
    seed=st.integers(0, 2**31 - 1),
    strongest=st.booleans(),
)
def test_any_uint8_batch_gives_finite_views_in_unit_range(tiles, seed, strongest):
    cfg = STRONGEST if strongest else augment.StainAugConfig()
    views = _views(seed, tiles, cfg, num_views=2, crop_size=6)
    assert np.all(np.isfinite(views)) and views.min() >= 0.0 and views.max() <= 1.0


# --- RandStainNA-style Lab statistics, blur and noise (off by default) ---

EXTRA_OFF = dict(lab_mean_shift=0.0, lab_std_scale=0.0, blur_sigma=0.0, noise_std=0.0)


def _lab_stats(views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-view Lab channel means and stds [N, 3] of views [N, H, W, 3]."""
    lab = np.asarray(color.rgb_to_lab(views.astype(np.float64))).reshape(len(views), -1, 3)
    return lab.mean(axis=1), lab.std(axis=1)


def test_extra_knobs_default_off_and_leave_the_other_draws_unchanged():
    assert {name: getattr(augment.StainAugConfig(), name) for name in EXTRA_OFF} == EXTRA_OFF
    tiles = _tiles(30)
    base = _views(31, tiles, augment.StainAugConfig(), num_views=2)
    tiny = dataclasses.replace(augment.StainAugConfig(), lab_mean_shift=1e-6, blur_sigma=1e-6, noise_std=1e-7)
    np.testing.assert_allclose(_views(31, tiles, tiny, num_views=2), base, atol=1e-4)


def test_lab_mean_shift_moves_the_means_within_the_spread():
    tiles = np.random.default_rng(32).integers(90, 170, (16, 8, 8, 3), dtype=np.uint8)
    strength = 0.5
    before = _views(33, tiles, None)[0]
    after = _views(33, tiles, _only(lab_mean_shift=strength))[0]
    (mean_before, std_before), (mean_after, std_after) = _lab_stats(before), _lab_stats(after)
    shift = (mean_after - mean_before) / augment.LAB_MEAN_SPREAD
    assert np.all(np.abs(shift) <= strength + 0.02) and shift.std(axis=0).min() > 0.05
    np.testing.assert_allclose(std_after, std_before, rtol=0.05, atol=0.05)


def test_lab_std_scale_scales_the_deviations():
    tiles = np.random.default_rng(34).integers(100, 160, (16, 8, 8, 3), dtype=np.uint8)
    strength = 0.3
    before = _views(35, tiles, None)[0]
    after = _views(35, tiles, _only(lab_std_scale=strength))[0]
    ratio = _lab_stats(after)[1] / _lab_stats(before)[1]
    assert np.all(np.abs(ratio - 1.0) <= strength + 0.03) and ratio.std() > 0.02
    np.testing.assert_allclose(_lab_stats(after)[0], _lab_stats(before)[0], atol=0.3)


def test_blur_smooths_keeps_flat_tiles_and_mean():
    tiles = _tiles(36, batch=8, size=16)
    before = _views(37, tiles, None)[0]
    after = _views(37, tiles, _only(blur_sigma=2.0))[0]

    def detail(images):
        return np.abs(np.diff(images, axis=1)).mean(axis=(1, 2, 3))

    assert np.all(detail(after) < detail(before)) and detail(after).std() > 1e-3  # sigma differs per example
    np.testing.assert_allclose(after.mean(axis=(1, 2)), before.mean(axis=(1, 2)), atol=0.02)
    flat = _views(38, np.full((2, 9, 9, 3), 123, np.uint8), _only(blur_sigma=3.0))
    np.testing.assert_allclose(flat, 123 / 255.0, atol=1e-6)


def test_noise_is_zero_mean_with_a_per_example_std():
    tiles = np.full((8, 32, 32, 3), 128, np.uint8)
    strength = 0.05
    views = _views(39, tiles, _only(noise_std=strength))[0]
    residual = views - 128 / 255.0
    stds = residual.reshape(8, -1).std(axis=1)
    assert stds.max() <= strength * 1.05 and stds.std() > 1e-3
    assert np.abs(residual.mean()) < 2e-3


def test_extra_knob_validation():
    for bad in ({"lab_std_scale": 1.0}, {"noise_std": 1.5}, {"blur_sigma": -1.0}, {"lab_mean_shift": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            augment.StainAugConfig.from_config(bad)


@settings(max_examples=15, deadline=None)
@given(tiles=hnp.arrays(np.uint8, (2, 8, 8, 3)), seed=st.integers(0, 2**31 - 1))
def test_any_uint8_batch_with_every_extra_knob_stays_finite(tiles, seed):
    cfg = dataclasses.replace(STRONGEST, lab_mean_shift=3.0, lab_std_scale=0.99, blur_sigma=2.0, noise_std=0.5)
    views = _views(seed, tiles, cfg, num_views=2, crop_size=6)
    assert np.all(np.isfinite(views)) and views.min() >= 0.0 and views.max() <= 1.0
