"""Whole-slide images for `mode=embed`: open a pyramidal TIFF/SVS, mask tissue at a low level, plan and read tiles.

Host-side numpy only. `open_slide` reads with tifffile (tiled pages are decoded one TIFF tile at a time, so a
region read never loads the whole level) or with OpenSlide when it is installed and asked for (`backend="auto"`
prefers OpenSlide for the formats tifffile cannot read). `plan_tiles` puts a grid of `tile_size` tiles with
`stride` on the slide at a pyramid level or at a resolution in microns per pixel, and keeps the tiles whose
tissue fraction, measured on an Otsu mask of the smallest level, reaches `min_tissue`. Coordinates are always
level-0 pixels (y, x of the top-left corner), as OpenSlide and QuPath report them.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import pathlib
import re

import numpy as np
import tifffile
from PIL import Image
from scipy import ndimage

TIFF_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi")  # tifffile reads these (JPEG tiles need imagecodecs)
OPENSLIDE_SUFFIXES = (".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")  # these need OpenSlide
SLIDE_SUFFIXES = TIFF_SUFFIXES + OPENSLIDE_SUFFIXES
BACKENDS = ("auto", "tifffile", "openslide")
_MIN_SATURATION = 0.07  # an Otsu threshold below this (a slide of glass only) is raised to it
_GLASS_MIN_CHANNEL = 215  # pixels whose darkest channel is brighter than this are glass
_CACHED_TILES = 64  # decoded TIFF tiles kept per level (neighbouring slide tiles share them)


class SlideError(ValueError):
    """A slide that cannot be opened or read; the message names the file."""


def openslide_available() -> bool:
    """Whether the `openslide` Python package is importable (it needs the OpenSlide C library too)."""
    return importlib.util.find_spec("openslide") is not None


class _TiffLevel:
    """One pyramid level of a TIFF: region reads decoding only the TIFF tiles they touch (LRU-cached)."""

    def __init__(self, tif: tifffile.TiffFile, page: tifffile.TiffPage):
        self._tif, self._page = tif, page
        self.shape = (int(page.imagelength), int(page.imagewidth))
        tiled = page.is_tiled and page.planarconfig == 1 and page.imagedepth == 1
        self._tile = (int(page.tilelength), int(page.tilewidth)) if tiled else None
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._whole: np.ndarray | None = None

    def _rgb(self, array: np.ndarray) -> np.ndarray:
        """uint8 (h, w, 3) from a decoded segment (grey is repeated, alpha dropped)."""
        if array.dtype != np.uint8:
            raise SlideError(f"pixel type {array.dtype}: only 8-bit slides are read")
        array = array.reshape(array.shape[-3], array.shape[-2], -1)
        return np.repeat(array, 3, axis=-1) if array.shape[-1] == 1 else array[..., :3]

    def _segment(self, index: int) -> np.ndarray:
        """TIFF tile `index` decoded to its full tile size."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        page, handle = self._page, self._tif.filehandle
        handle.seek(page.dataoffsets[index])
        data = handle.read(page.databytecounts[index])
        segment = self._rgb(page.decode(data, index, jpegtables=page.jpegtables, _fullsize=True)[0])
        self._cache[index] = segment
        if len(self._cache) > _CACHED_TILES:
            self._cache.popitem(last=False)
        return segment

    def read(self, y: int, x: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width, 3) at level pixel (y, x); outside the image is white, as glass is."""
        out = np.full((height, width, 3), 255, np.uint8)
        y0, x0 = max(y, 0), max(x, 0)
        y1, x1 = min(y + height, self.shape[0]), min(x + width, self.shape[1])
        if y1 <= y0 or x1 <= x0:
            return out
        if self._tile is None:
            if self._whole is None:
                self._whole = self._rgb(self._page.asarray())
            out[y0 - y : y1 - y, x0 - x : x1 - x] = self._whole[y0:y1, x0:x1]
            return out
        tile_h, tile_w = self._tile
        columns = -(-self.shape[1] // tile_w)
        for row in range(y0 // tile_h, (y1 - 1) // tile_h + 1):
            for column in range(x0 // tile_w, (x1 - 1) // tile_w + 1):
                segment = self._segment(row * columns + column)
                top, left = row * tile_h, column * tile_w
                a0, a1 = max(y0, top), min(y1, top + tile_h)
                b0, b1 = max(x0, left), min(x1, left + tile_w)
                out[a0 - y : a1 - y, b0 - x : b1 - x] = segment[a0 - top : a1 - top, b0 - left : b1 - left]
        return out


def _tiff_mpp(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> float | None:
    """Microns per level-0 pixel: Aperio's `MPP = ` in the description, else X resolution in cm or inch."""
    match = re.search(r"MPP\s*=\s*([0-9.]+)", page.description or "")
    if match:
        return float(match.group(1))
    resolution, unit = page.tags.get("XResolution"), page.tags.get("ResolutionUnit")
    if resolution is None or unit is None or unit.value not in (2, 3):
        return None
    numerator, denominator = resolution.value
    if numerator <= 0 or denominator <= 0 or (unit.value == 2 and numerator == denominator == 1):
        return None  # 1 pixel per inch is tifffile's "no resolution" default
    return (25400.0 if unit.value == 2 else 10000.0) * denominator / numerator


class TiffSlide:
    """A slide read with tifffile: the levels of its first image series (a pyramid, or one level)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        try:
            self._tif = tifffile.TiffFile(path)
            series = self._tif.series[0]
            pages = [level.keyframe for level in series.levels]
            self._levels = [_TiffLevel(self._tif, page) for page in pages]
            self.mpp = _tiff_mpp(self._tif, pages[0])
        except Exception as error:  # tifffile raises many types for a file that is not a TIFF
            raise SlideError(f"{path}: not a readable TIFF slide ({type(error).__name__}: {error})") from None
        self.level_shapes = [level.shape for level in self._levels]

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width, 3) of `level`; (y, x) in level-0 pixels, height and width in `level` pixels."""
        scale = self.downsample(level)
        return self._levels[level].read(int(round(y / scale)), int(round(x / scale)), height, width)

    def downsample(self, level: int) -> float:
        """Level-0 pixels per pixel of `level` (from the widths, as OpenSlide computes it)."""
        return self.level_shapes[0][1] / self.level_shapes[level][1]

    def close(self) -> None:
        self._tif.close()


class OpenSlideSlide:
    """A slide read with OpenSlide (every format it knows); same interface as TiffSlide."""

    def __init__(self, path: pathlib.Path):
        import openslide  # pylint: disable=import-outside-toplevel - an optional dependency

        self.path = path
        try:
            self._slide = openslide.OpenSlide(str(path))
        except Exception as error:  # OpenSlideError, OpenSlideUnsupportedFormatError
            raise SlideError(f"{path}: OpenSlide cannot open it ({type(error).__name__}: {error})") from None
        self.level_shapes = [(int(h), int(w)) for w, h in self._slide.level_dimensions]
        mpp = self._slide.properties.get("openslide.mpp-x")
        self.mpp = float(mpp) if mpp else None

    def read(self, level: int, y: int, x: int, height: int, width: int) -> np.ndarray:
        """uint8 (height, width, 3) of `level` at level-0 (y, x), transparent pixels composited on white."""
        rgba = np.asarray(self._slide.read_region((int(x), int(y)), level, (int(width), int(height))))
        alpha = rgba[..., 3:4].astype(np.float32) / 255.0
        return np.round(rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)

    def downsample(self, level: int) -> float:
        return self.level_shapes[0][1] / self.level_shapes[level][1]

    def close(self) -> None:
        self._slide.close()


Slide = TiffSlide | OpenSlideSlide


def open_slide(path: pathlib.Path, backend: str = "auto") -> Slide:
    """The slide at `path` with `backend` (auto: OpenSlide for its own formats when installed, else tifffile)."""
    suffix = path.suffix.lower()
    if backend == "openslide" or (backend == "auto" and suffix in OPENSLIDE_SUFFIXES):
        if not openslide_available():
            raise SlideError(f"{path}: reading {suffix} slides needs OpenSlide (pip install openslide-python "
                             "openslide-bin); .svs/.tif/.tiff/.ndpi are read without it")
        return OpenSlideSlide(path)
    return TiffSlide(path)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of `values` in [0, 1]: the cut that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    centres = (edges[:-1] + edges[1:]) / 2
    weight = np.cumsum(counts).astype(np.float64)
    mass = np.cumsum(counts * centres)
    total, total_mass = weight[-1], mass[-1]
    background, foreground = weight, total - weight
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mass * background - mass * total) ** 2 / (background * foreground)
    between[(background == 0) | (foreground == 0)] = -1.0
    return float(edges[int(np.argmax(between)) + 1])


def tissue_mask(image: np.ndarray) -> np.ndarray:
    """Boolean (H, W) tissue mask of a low-resolution uint8 RGB image: Otsu on HSV saturation, glass removed.

    Stained tissue is saturated and glass is bright and grey; the threshold is at least 0.07 so an image of
    glass alone is not split in two. Small holes and specks are closed and opened away.
    """
    rgb = image.astype(np.int16)
    brightest, darkest = rgb.max(-1), rgb.min(-1)
    saturation = (brightest - darkest) / np.maximum(brightest, 1)
    threshold = max(otsu_threshold(saturation), _MIN_SATURATION)
    mask = (saturation >= threshold) & (darkest <= _GLASS_MIN_CHANNEL)
    return ndimage.binary_opening(ndimage.binary_closing(mask, iterations=2), iterations=2)


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one slide are: level-0 top-left corners, and how each is read."""

    coords: list[tuple[int, int]]  # (y, x) in level-0 pixels, row-major
    background: int  # grid positions dropped for too little tissue
    level: int  # pyramid level the pixels are read from
    read_size: int  # edge of the region read at `level` (resized to tile_size when it differs)
    tile_size: int  # edge of the tiles handed on
    extent: int  # edge of a tile in level-0 pixels
    mpp: float | None  # microns per pixel of the tiles (None when the slide does not say)


def choose_level(slide: Slide, level: int, mpp: float) -> tuple[int, float]:
    """(level read from, level-0 pixels per output pixel): with `mpp` > 0 the coarsest level still at least as
    fine as `mpp` (read there, then resized down), else `level` itself."""
    if mpp <= 0:
        if not 0 <= level < len(slide.level_shapes):
            raise SlideError(f"{slide.path} has levels 0..{len(slide.level_shapes) - 1}; got level {level}")
        return level, slide.downsample(level)
    if slide.mpp is None:
        raise SlideError(f"{slide.path} does not record its microns per pixel; choose a pyramid level instead")
    wanted = mpp / slide.mpp
    finer = [index for index in range(len(slide.level_shapes)) if slide.downsample(index) <= wanted * (1 + 1e-3)]
    if not finer:
        raise SlideError(f"{slide.path}: {mpp} µm/px is finer than its level 0 ({slide.mpp:.4g} µm/px)")
    return max(finer, key=slide.downsample), wanted


def plan_tiles(slide: Slide, *, tile_size: int, stride: int, level: int = 0, mpp: float = 0.0,
               min_tissue: float = 0.5) -> TilePlan:
    """The tiles of `slide` on a `stride` grid at `level` (or `mpp` µm/px), keeping tiles with ≥ `min_tissue` of
    tissue on the Otsu mask of the smallest level (0 keeps every tile)."""
    read_level, scale = choose_level(slide, level, mpp)
    extent = tile_size * scale  # level-0 pixels per tile (fractional when resampled)
    height0, width0 = slide.level_shapes[0]
    ys = np.arange(0, max(height0 - extent, 0) + 1, stride * scale) if height0 >= extent else np.zeros(0)
    xs = np.arange(0, max(width0 - extent, 0) + 1, stride * scale) if width0 >= extent else np.zeros(0)
    grid = [(int(round(y)), int(round(x))) for y in ys for x in xs]
    keep = np.ones(len(grid), bool)
    if min_tissue > 0 and grid:
        mask_level = len(slide.level_shapes) - 1
        mask_h, mask_w = slide.level_shapes[mask_level]
        mask = tissue_mask(slide.read(mask_level, 0, 0, mask_h, mask_w))
        integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        factor = slide.downsample(mask_level)
        corners = np.asarray(grid, np.float64) / factor
        lo = np.clip(np.floor(corners).astype(int), 0, [mask_h, mask_w])
        hi = np.clip(np.ceil(corners + extent / factor).astype(int), 0, [mask_h, mask_w])
        tissue = (integral[hi[:, 0], hi[:, 1]] - integral[lo[:, 0], hi[:, 1]] - integral[hi[:, 0], lo[:, 1]]
                  + integral[lo[:, 0], lo[:, 1]])
        area = np.maximum((hi - lo).prod(axis=1), 1)
        keep = tissue >= min_tissue * area
    read_size = int(round(tile_size * scale / slide.downsample(read_level)))
    tile_mpp = slide.mpp * scale if slide.mpp is not None else None
    return TilePlan([c for c, k in zip(grid, keep) if k], int((~keep).sum()), read_level, read_size, tile_size,
                    int(round(extent)), tile_mpp)


def read_tile(slide: Slide, plan: TilePlan, y: int, x: int) -> np.ndarray:
    """The uint8 (tile_size, tile_size, 3) tile of `plan` at level-0 (y, x), resampled when read_size differs."""
    region = slide.read(plan.level, y, x, plan.read_size, plan.read_size)
    if plan.read_size == plan.tile_size:
        return region
    return np.asarray(Image.fromarray(region).resize((plan.tile_size, plan.tile_size), Image.Resampling.BILINEAR))

