"""Slides: pyramid levels and region reads equal the pixels written, the Otsu mask drops glass, tiling at a
level or at microns per pixel puts tiles where they belong."""

import pathlib

import numpy as np
import pytest
import tifffile

from data_pipelines.tiling import locate_cmu_slide, read_slide_region
from lmc_jax import slides

MPP = 0.5  # microns per level-0 pixel of the test slides


def slide_image(height: int = 256, width: int = 384) -> np.ndarray:
    """Tissue of the embedded H&E slide on the left half, glass (bright grey with noise) on the right."""
    tissue = read_slide_region(locate_cmu_slide())[832 : 832 + height, 1088 : 1088 + width // 2]
    glass = 240 + np.random.default_rng(0).integers(0, 8, (height, width - width // 2, 3))
    return np.ascontiguousarray(np.concatenate([tissue, glass.astype(np.uint8)], axis=1))


def write_pyramid(path: pathlib.Path, image: np.ndarray, levels: int = 3, tile: int = 32,
                  tiled: bool = True) -> pathlib.Path:
    """A pyramidal TIFF (level k = every 2**k-th pixel, in sub-IFDs) recording MPP µm/px, as scanners write it."""
    options = dict(photometric="rgb", compression="zlib", resolutionunit="CENTIMETER", **(
        {"tile": (tile, tile)} if tiled else {}))
    with tifffile.TiffWriter(path) as tif:
        tif.write(image, subifds=levels - 1, resolution=(1e4 / MPP, 1e4 / MPP), **options)
        for level in range(1, levels):
            scale = 2**level
            tif.write(np.ascontiguousarray(image[::scale, ::scale]), subfiletype=1,
                      resolution=(1e4 / MPP / scale, 1e4 / MPP / scale), **options)
    return path


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory) -> tuple[pathlib.Path, np.ndarray]:
    image = slide_image()
    return write_pyramid(tmp_path_factory.mktemp("slides") / "slide.tif", image), image


def test_levels_mpp_and_region_reads_equal_the_written_pixels(pyramid):
    path, image = pyramid
    slide = slides.open_slide(path)
    assert slide.level_shapes == [(256, 384), (128, 192), (64, 96)]
    assert slide.mpp == pytest.approx(MPP) and slide.downsample(2) == 4
    np.testing.assert_array_equal(slide.read(0, 17, 45, 70, 90), image[17:87, 45:135])  # spans TIFF tiles
    np.testing.assert_array_equal(slide.read(1, 40, 64, 30, 50), image[::2, ::2][20:50, 32:82])  # level-0 corner
    edge = slide.read(0, 240, 370, 32, 32)  # past the bottom-right corner: white, as glass
    np.testing.assert_array_equal(edge[:16, :14], image[240:, 370:])
    assert (edge[16:] == 255).all() and (edge[:, 14:] == 255).all()
    slide.close()


def test_striped_tiffs_and_the_embedded_svs_read_too(tmp_path):
    image = slide_image(64, 96)
    slide = slides.open_slide(write_pyramid(tmp_path / "striped.tiff", image, levels=1, tiled=False))
    np.testing.assert_array_equal(slide.read(0, 5, 7, 40, 50), image[5:45, 7:57])
    svs = slides.open_slide(locate_cmu_slide())
    assert svs.mpp == pytest.approx(0.499) and svs.level_shapes == [(2967, 2220)]
    np.testing.assert_array_equal(svs.read(0, 1000, 700, 300, 250), read_slide_region(locate_cmu_slide())[1000:1300,
                                                                                                          700:950])


def test_otsu_splits_two_modes_and_the_mask_drops_glass(pyramid):
    values = np.concatenate([np.full(500, 0.1), np.full(300, 0.6)]) + np.random.default_rng(1).normal(0, 0.02, 800)
    threshold = slides.otsu_threshold(np.clip(values, 0, 1))
    assert values[:500].max() < threshold < values[500:].min()
    _, image = pyramid
    mask = slides.tissue_mask(image)
    assert mask[:, 192:].mean() < 0.01  # glass
    assert mask[:, :192].mean() > 0.9  # the slide crop is tissue
    assert not slides.tissue_mask(np.full((64, 64, 3), 245, np.uint8)).any()  # glass alone is not split in two


def test_plan_at_a_level_keeps_tissue_tiles_and_counts_background(pyramid):
    path, image = pyramid
    slide = slides.open_slide(path)
    plan = slides.plan_tiles(slide, tile_size=32, stride=32, level=1, min_tissue=0.5)
    assert len(plan.coords) + plan.background == 4 * 6  # 128 × 192 at level 1 in 32-px tiles
    assert plan.background >= 12 and all(x < 192 for _, x in plan.coords)  # the glass half is dropped
    assert (plan.level, plan.read_size, plan.extent, plan.mpp) == (1, 32, 64, pytest.approx(2 * MPP))
    y, x = plan.coords[0]
    np.testing.assert_array_equal(slides.read_tile(slide, plan, y, x), image[::2, ::2][y // 2 : y // 2 + 32,
                                                                                      x // 2 : x // 2 + 32])
    every = slides.plan_tiles(slide, tile_size=48, stride=24, level=0, min_tissue=0.0)
    assert every.background == 0 and len(every.coords) == 9 * 15  # overlapping grid, nothing dropped


def test_plan_at_microns_per_pixel_reads_the_closest_finer_level_and_resizes(pyramid):
    path, _ = pyramid
    slide = slides.open_slide(path)
    exact = slides.plan_tiles(slide, tile_size=16, stride=16, mpp=2.0, min_tissue=0.0)
    assert (exact.level, exact.read_size, exact.extent) == (2, 16, 64)
    between = slides.plan_tiles(slide, tile_size=16, stride=16, mpp=1.5, min_tissue=0.0)
    assert (between.level, between.read_size, between.extent) == (1, 24, 48)  # 1.0 µm/px read, shrunk 1.5×
    assert slides.read_tile(slide, between, *between.coords[5]).shape == (16, 16, 3)
    with pytest.raises(slides.SlideError, match="finer than its level 0"):
        slides.plan_tiles(slide, tile_size=16, stride=16, mpp=0.25)
    with pytest.raises(slides.SlideError, match="levels 0..2"):
        slides.plan_tiles(slide, tile_size=16, stride=16, level=3)


def test_unreadable_and_openslide_only_slides_name_the_file(tmp_path):
    broken = tmp_path / "broken.svs"
    broken.write_bytes(b"II*\x00not a tiff at all")
    with pytest.raises(slides.SlideError, match="broken.svs: not a readable TIFF slide"):
        slides.open_slide(broken)
    if not slides.openslide_available():
        with pytest.raises(slides.SlideError, match="needs OpenSlide"):
            slides.open_slide(tmp_path / "slide.mrxs")


class _FakeOpenSlide:
    """OpenSlide's documented Python API over an array: level_dimensions (w, h), properties, and read_region
    ((x, y) in level-0 pixels, level, (w, h)) returning an RGBA PIL image whose outside is transparent."""

    def __init__(self, path: str):
        self.levels = [slide_image(), slide_image()[::2, ::2]]
        self.level_dimensions = [(level.shape[1], level.shape[0]) for level in self.levels]
        self.properties = {"openslide.mpp-x": str(MPP)}

    def read_region(self, location, level, size):
        from PIL import Image

        (x, y), (width, height), scale = location, size, 2**level
        rgba = np.zeros((height, width, 4), np.uint8)
        source = self.levels[level][y // scale : y // scale + height, x // scale : x // scale + width]
        rgba[: source.shape[0], : source.shape[1], :3], rgba[: source.shape[0], : source.shape[1], 3] = source, 255
        return Image.fromarray(rgba)

    def close(self) -> None:
        pass


def test_the_openslide_backend_reads_level_zero_corners_and_whitens_transparency(monkeypatch, tmp_path):
    import importlib.machinery
    import sys
    import types

    fake = types.ModuleType("openslide")
    fake.__spec__ = importlib.machinery.ModuleSpec("openslide", None)
    fake.OpenSlide = _FakeOpenSlide
    monkeypatch.setitem(sys.modules, "openslide", fake)
    slide = slides.open_slide(tmp_path / "slide.mrxs")  # auto: OpenSlide for its own formats
    assert isinstance(slide, slides.OpenSlideSlide) and slide.mpp == MPP and slide.level_shapes[1] == (128, 192)
    image = slide_image()
    np.testing.assert_array_equal(slide.read(1, 40, 64, 30, 50), image[::2, ::2][20:50, 32:82])
    edge = slide.read(0, 250, 380, 10, 10)  # beyond the slide: transparent, composited on white
    np.testing.assert_array_equal(edge[:6, :4], image[250:, 380:])
    assert (edge[6:] == 255).all()
    plan = slides.plan_tiles(slide, tile_size=32, stride=32, level=1, min_tissue=0.5)
    assert plan.background >= 12 and all(x < 192 for _, x in plan.coords)
