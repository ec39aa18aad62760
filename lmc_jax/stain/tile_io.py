"""Image files in and out for the normalize mode: find tiles, decode to uint8 RGB, write atomically by extension.

Host-side I/O only. Decoding never raises for a bad file: it returns the reason, so a folder with
a corrupt or foreign file is processed around it.
"""

import os
import pathlib

import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""File name endings (case-insensitive) treated as tiles; anything else in the folder is reported as skipped."""
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def list_files(folder: pathlib.Path, recursive: bool) -> list[pathlib.Path]:
    """Every regular file under `folder` (sub-folders too if `recursive`), sorted, relative to `folder`."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path.relative_to(folder) for path in candidates if path.is_file())


def _as_rgb(array: np.ndarray) -> np.ndarray | str:
    """uint8 (H, W, 3) from a decoded array (grey, RGB or RGBA), or the reason it cannot be one."""
    if array.dtype != np.uint8:
        return f"unsupported pixel type {array.dtype} (8-bit images only)"
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (3, 4) or min(array.shape[:2]) < 1:
        return f"unsupported image shape {array.shape} (expected H x W, H x W x 3 or H x W x 4)"
    return np.ascontiguousarray(array[..., :3])


def read_rgb(path: pathlib.Path) -> np.ndarray | str:
    """The image at `path` as uint8 (H, W, 3), or a one-line reason why it cannot be read (never raises)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (name does not end in one of {', '.join(IMAGE_SUFFIXES)})"
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode in ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "YCbCr"):
                return np.asarray(image.convert("RGB")).copy()
            return _as_rgb(np.asarray(image))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as pil_error:
        if path.suffix.lower() not in (".tif", ".tiff"):
            return f"cannot decode ({type(pil_error).__name__}: {pil_error})"
        try:
            return _as_rgb(tifffile.imread(path))
        except Exception as tiff_error:  # tifffile/imagecodecs raise many types for corrupt data
            return f"cannot decode ({type(tiff_error).__name__}: {tiff_error})"


def write_rgb(path: pathlib.Path, image: np.ndarray, jpeg_quality: int) -> None:
    """Write uint8 (H, W, 3) in the format its name ends with, via a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    image_format = _PIL_FORMATS[path.suffix.lower()]
    options = {"JPEG": {"quality": jpeg_quality}, "TIFF": {"compression": "tiff_deflate"}}.get(image_format, {})
    Image.fromarray(image).save(temporary, format=image_format, **options)
    os.replace(temporary, path)


def copy_bytes(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Copy a file byte for byte (flagged tiles are passed through unchanged, without re-encoding)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.partial")
    temporary.write_bytes(source.read_bytes())
    os.replace(temporary, destination)
