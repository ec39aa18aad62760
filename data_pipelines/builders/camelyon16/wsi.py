"""Region reads from pyramidal TIFF slides with tifffile alone (no OpenSlide): only the overlapped tiles are decoded.

Handles the layouts whole-slide TIFFs use: reduced levels as SubIFDs of the first page, or as following
pages (ASAP/Camelyon, generic tiled TIFF; pages of another aspect ratio, e.g. label or macro images, are
ignored); tiled or stripped pages; any codec imagecodecs decodes (JPEG with shared tables, Deflate, LZW, ...).
"""

import math

import numpy as np
import tifffile

_ASPECT_TOLERANCE = 0.02  # relative difference of height/width for a page to count as a pyramid level
_JPEG_CODES = {6, 7, 33007, 34892}  # OJPEG, JPEG, ALT_JPEG, JPEG_LOSSY: tifffile passes them tables and headers


def pyramid(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    """The slide's levels, full resolution first, each smaller than the one before."""
    base = tif.pages[0]
    candidates = list(base.pages) if base.subifds else list(tif.pages[1:])
    levels = [base]
    aspect = base.imagelength / base.imagewidth
    for page in candidates:
        same_aspect = abs(page.imagelength / page.imagewidth - aspect) <= _ASPECT_TOLERANCE * aspect
        if same_aspect and page.imagewidth < levels[-1].imagewidth and page.samplesperpixel >= 3:
            levels.append(page)
    return levels


def downsample(base: tifffile.TiffPage, page: tifffile.TiffPage) -> float:
    """How many level-0 pixels one pixel of `page` spans."""
    return base.imagewidth / page.imagewidth


def read_region(page: tifffile.TiffPage, y: int, x: int, height: int, width: int) -> np.ndarray:
    """uint8 (height, width, 3) pixels of `page` at top-left (y, x); the region must lie inside the page.

    Absent (zero-length) tiles read as white, the colour of glass.
    """
    if not (0 <= y and 0 <= x and y + height <= page.imagelength and x + width <= page.imagewidth):
        raise ValueError(
            f"Region (y={y}, x={x}, {height}x{width}) is outside the {page.imagelength}x{page.imagewidth} page "
            f"of {page.parent.filename}."
        )
    if page.dtype != np.uint8 or page.samplesperpixel < 3 or page.planarconfig != 1:
        raise ValueError(f"{page.parent.filename}: expected interleaved 8-bit RGB, got dtype {page.dtype}, "
                         f"{page.samplesperpixel} samples, planar config {page.planarconfig}.")
    if page.is_tiled:
        seg_h, seg_w = page.tilelength, page.tilewidth
    else:
        seg_h, seg_w = min(page.rowsperstrip, page.imagelength), page.imagewidth
    n_cols = math.ceil(page.imagewidth / seg_w)
    decode = page.decode  # fetch before seeking: building the decoder may read from the file
    decode_args = {"_fullsize": page.is_tiled}  # as TiffPage.segments calls it
    if page.compression in _JPEG_CODES:
        decode_args |= {"jpegtables": page.jpegtables, "jpegheader": page.jpegheader}
    out = np.full((height, width, 3), 255, np.uint8)
    handle = page.parent.filehandle
    for row in range(y // seg_h, (y + height - 1) // seg_h + 1):
        for col in range(x // seg_w, (x + width - 1) // seg_w + 1):
            index = row * n_cols + col
            if not page.databytecounts[index]:
                continue
            handle.seek(page.dataoffsets[index])
            data = handle.read(page.databytecounts[index])
            segment = decode(data, index, **decode_args)[0]
            segment = segment.reshape(segment.shape[-3:])[..., :3]
            top, left = row * seg_h, col * seg_w
            y0, y1 = max(y, top), min(y + height, top + segment.shape[0])
            x0, x1 = max(x, left), min(x + width, left + segment.shape[1])
            out[y0 - y : y1 - y, x0 - x : x1 - x] = segment[y0 - top : y1 - top, x0 - left : x1 - left]
    return out
