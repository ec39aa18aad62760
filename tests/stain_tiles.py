"""Shared test data for the stain normalizers: real H&E tiles cut from the embedded slide, and synthetic stains."""

import numpy as np

from data_pipelines import tiling
from lmc_jax.stain import robust

TILE_CORNERS = ((128, 896), (896, 1152), (1280, 1408), (1792, 896), (2048, 1536), (2432, 640))
"""Top-left (y, x) of 128 px tiles with ≥ 60% tissue (tiling.tissue_mask), spread over the slide."""
REFERENCE_CORNER = (2560, 1664)


def slide_tiles(size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(tiles [6, size, size, 3], reference tile [size, size, 3]) of the embedded slide, uint8."""
    slide = tiling.read_slide_region(tiling.locate_cmu_slide())
    tiles = np.stack([slide[y : y + size, x : x + size] for y, x in TILE_CORNERS])
    y, x = REFERENCE_CORNER
    return tiles, slide[y : y + size, x : x + size].copy()


def synthetic_stains(
    stains: np.ndarray, seed: int, batch: int = 2, size: int = 32, io: float = 255.0, offset: float = 1.0
) -> np.ndarray:
    """uint8 tiles [batch, size, size, 3], I = io·exp(−C·stains) − offset (Beer-Lambert; the offset matches the
    OD convention: 1 for Macenko's −log((I + 1)/io), 0 for StainTools'), with pure H, pure E, mixtures, glass."""
    rng = np.random.default_rng(seed)
    conc = rng.gamma(2.0, 0.35, (batch, size * size, 2))
    kind = rng.random((batch, size * size))
    conc[kind < 0.3, 1] = 0.0
    conc[(kind >= 0.3) & (kind < 0.6), 0] = 0.0
    conc[kind > 0.92] = 0.0
    intensity = io * np.exp(-conc @ stains) - offset
    return np.clip(np.round(intensity), 0, 255).astype(np.uint8).reshape(batch, size, size, 3)


def special_patches(size: int = 8) -> np.ndarray:
    """uint8 patches [4, size, size, 3] no normalizer can use: white glass, black, one flat pink, one flat grey."""
    colours = ((255, 255, 255), (0, 0, 0), (200, 120, 160), (128, 128, 128))
    return np.stack([np.full((size, size, 3), colour, np.uint8) for colour in colours])


SPECIAL_FLAGS = [robust.NO_TISSUE, robust.NO_TISSUE, robust.DEGENERATE, robust.DEGENERATE]
"""The flags every normalizer gives `special_patches()`: glass and black have no tissue, flat colours one stain."""


def assert_flagged_unchanged(batch: np.ndarray, out, flags) -> None:
    """A uint8 transform's output keeps the batch's dtype and shape, and its flagged images are the inputs."""
    assert out.dtype == np.uint8 and out.shape == batch.shape
    unchanged = np.asarray(flags) != robust.NORMALIZED
    np.testing.assert_array_equal(np.asarray(out)[unchanged], batch[unchanged])


def assert_unit_range(out_float) -> None:
    """A float transform's output is finite and within [0, 1]."""
    assert np.all(np.isfinite(out_float)) and float(out_float.min()) >= 0.0 and float(out_float.max()) <= 1.0


TORCHSTAIN_MEAN_TOLERANCE = 0.6
"""Mean |Δ| (0-255) to torchstain's uint8 output: torchstain truncates, we round (≈ 0.5 from that alone)."""


def assert_matches_torchstain(transform, params, tiles: np.ndarray, expected: np.ndarray) -> None:
    """`transform(tiles, params)` normalizes every tile and agrees with torchstain's uint8 `expected`: rounded
    within TORCHSTAIN_MEAN_TOLERANCE on average and 1 at most; float in, float out, truncated, almost everywhere."""
    out, flags = transform(tiles, params)
    assert (np.asarray(flags) == robust.NORMALIZED).all()
    diff = np.abs(np.asarray(out, np.int32) - expected)
    assert diff.mean() <= TORCHSTAIN_MEAN_TOLERANCE and diff.max() <= 1, (diff.mean(), diff.max())
    out_float, _ = transform(tiles.astype(np.float32) / 255.0, params)
    truncated = np.floor(np.asarray(out_float, np.float64) * 255.0 + 1e-3).astype(np.int32)
    assert np.mean(truncated != expected) < 0.005 and np.abs(truncated - expected).max() <= 1
