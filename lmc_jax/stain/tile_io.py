"""Image files in and out for the normalize mode: find tiles, decode to uint8 RGB (+ alpha), write atomically.

Host-side I/O only. Decoding never raises for a bad file: it returns the reason, so a folder with
a corrupt or foreign file is processed around it. Nothing is converted silently: an alpha channel is
returned beside the RGB pixels (and written back unchanged by `write_rgb`), and every other conversion
(16-bit scaled to 8 bits with rounding, grey, palette, bilevel, CMYK, YCbCr to RGB) is named in
`Decoded.conversion` for the caller to count and list.
"""

import dataclasses
import os
import pathlib

import imagecodecs
import numpy as np
import tifffile
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
"""File name endings (case-insensitive) treated as tiles; anything else in the folder is reported as skipped."""
_PIL_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}
ALPHA_FORMATS = frozenset({"PNG", "TIFF"})
"""Output formats that store an alpha channel; JPEG cannot."""
_CONVERTED_MODES = {"L": "grayscale", "LA": "grayscale", "P": "palette", "PA": "palette", "1": "bilevel",
                    "CMYK": "CMYK", "YCbCr": "YCbCr"}
"""Pillow modes converted to RGB, with the name the conversion is reported under."""


@dataclasses.dataclass(frozen=True)
class Decoded:
    """A decoded tile: uint8 RGB (H, W, 3), its uint8 alpha (H, W) if it had one, and what was converted."""

    rgb: np.ndarray
    alpha: np.ndarray | None = None
    conversion: str | None = None  # e.g. "16-bit RGB scaled to 8 bits (rounded)"; None = read as stored


def list_files(folder: pathlib.Path, recursive: bool) -> list[pathlib.Path]:
    """Every regular file under `folder` (sub-folders too if `recursive`), sorted, relative to `folder`."""
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(path.relative_to(folder) for path in candidates if path.is_file())


def to_8bit(array: np.ndarray) -> np.ndarray:
    """uint16 0..65535 scaled to uint8 0..255 with rounding (x * 255 / 65535, half up); not the high byte."""
    return ((array.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _split(array: np.ndarray, conversion: str | None) -> Decoded | str:
    """Decoded from a uint8/uint16 array of shape H x W, H x W x 2 (grey + alpha), x 3 or x 4; else the reason."""
    if array.dtype == np.uint16:
        kind = {2: "grayscale", 3: "RGB", 4: "RGB"}.get(array.shape[-1] if array.ndim == 3 else 1, "grayscale")
        array, conversion = to_8bit(array), f"16-bit {kind} scaled to 8 bits (rounded)"
    elif array.dtype != np.uint8:
        return f"unsupported pixel type {array.dtype} (8- and 16-bit images only)"
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 2, 3, 4) or min(array.shape[:2]) < 1:
        return f"unsupported image shape {array.shape} (expected H x W, or H x W x 2, 3 or 4)"
    channels = array.shape[-1]
    colour = array[..., :3] if channels >= 3 else np.repeat(array[..., :1], 3, axis=-1)
    if channels < 3 and conversion is None:
        conversion = "grayscale converted to RGB"
    alpha = np.ascontiguousarray(array[..., -1]) if channels in (2, 4) else None
    return Decoded(np.ascontiguousarray(colour), alpha, conversion)


def _is_16bit(image: Image.Image) -> bool:
    """Whether Pillow would decode more than 8 bits per sample (it cuts 16-bit RGB to the high byte)."""
    if image.mode.startswith("I;16"):
        return True
    args = image.tile[0].args if image.tile else None
    rawmode = args if isinstance(args, str) else (args[0] if args and isinstance(args[0], str) else "")
    return ";16" in rawmode


def _from_pil(path: pathlib.Path, image: Image.Image) -> Decoded | str:
    """Decoded from an opened Pillow image: 16-bit data re-read losslessly, other modes converted and named."""
    if _is_16bit(image):
        array = imagecodecs.png_decode(path.read_bytes()) if image.format == "PNG" else tifffile.imread(path)
        return _split(np.asarray(array), None)
    image.load()
    if image.mode in ("RGB", "RGBA"):
        return _split(np.asarray(image), None)
    if image.mode not in _CONVERTED_MODES:
        return _split(np.asarray(image), None)  # e.g. I, F: named as unsupported
    has_alpha = image.mode in ("LA", "PA", "RGBA") or "transparency" in image.info
    converted = np.asarray(image.convert("RGBA" if has_alpha else "RGB"))
    return _split(converted, f"{_CONVERTED_MODES[image.mode]} ({image.mode}) converted to RGB")


def read_image(path: pathlib.Path) -> Decoded | str:
    """The image at `path` as Decoded, or a one-line reason why it cannot be read (never raises)."""
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        return f"not an image file (name does not end in one of {', '.join(IMAGE_SUFFIXES)})"
    try:
        with Image.open(path) as image:
            return _from_pil(path, image)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, RuntimeError) as pil_error:
        if path.suffix.lower() not in (".tif", ".tiff"):
            return f"cannot decode ({type(pil_error).__name__}: {pil_error})"
        try:
            return _split(tifffile.imread(path), None)
        except Exception as tiff_error:  # tifffile/imagecodecs raise many types for corrupt data
            return f"cannot decode ({type(tiff_error).__name__}: {tiff_error})"


def read_rgb(path: pathlib.Path) -> np.ndarray | str:
    """The image at `path` as uint8 (H, W, 3) (alpha ignored), or a one-line reason why it cannot be read."""
    decoded = read_image(path)
    return decoded if isinstance(decoded, str) else decoded.rgb


def keeps_alpha(path: pathlib.Path) -> bool:
    """Whether the format `path` is written in (by its extension) stores an alpha channel."""
    return _PIL_FORMATS[path.suffix.lower()] in ALPHA_FORMATS


def write_rgb(path: pathlib.Path, image: np.ndarray, jpeg_quality: int, alpha: np.ndarray | None = None) -> None:
    """Write uint8 (H, W, 3), with `alpha` (H, W) as a 4th channel when given, in the format its name ends with,
    via a temporary file and an atomic rename. ValueError if `alpha` is given for a format that cannot keep it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.partial")
    image_format = _PIL_FORMATS[path.suffix.lower()]
    if alpha is not None:
        if image_format not in ALPHA_FORMATS:
            raise ValueError(f"{path}: {image_format} cannot store an alpha channel; write the RGB pixels alone.")
        image = np.concatenate([image, alpha[..., None]], axis=-1)
    options = {"JPEG": {"quality": jpeg_quality}, "TIFF": {"compression": "tiff_deflate"}}.get(image_format, {})
    Image.fromarray(image).save(temporary, format=image_format, **options)
    os.replace(temporary, path)


def copy_bytes(source: pathlib.Path, destination: pathlib.Path) -> None:
    """Copy a file byte for byte (flagged tiles are passed through unchanged, without re-encoding)."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.partial")
    temporary.write_bytes(source.read_bytes())
    os.replace(temporary, destination)
