"""Shared parts of the TFDS builders: the example schema, deterministic array_record writing, image fitting, splits.

Every builder yields the same decoded example: `image` uint8 (T, T, 3), `label` int64 (-1 = unlabelled where a
builder allows it), `site` ClassLabel (the domain), `region` int64 (patient / slide / image: the group key of
patient-disjoint folds), `coords` int64 (2,) = top-left (y, x) in source pixels, `tile_id` int64 unique per tile.
Images are raw `tfds.features.Tensor`s by default, as in `cmu_small_region`: exact pixels and no TensorFlow.
`example_features(..., image_encoding=...)` also offers "bytes" (one byte per value instead of TFDS's int64
varints), "zlib" (those bytes compressed) and "png" / "jpeg" (`tfds.features.Image`; the builder passes
`encode_image(tile, encoding)`, since TFDS without TensorFlow cannot encode a numpy image). Each encoding is
another feature spec, so a builder offering one makes it part of its BuilderConfig (a config's features and
shards then agree, and existing configs read as before); readers get uint8 (T, T, 3) whatever the encoding.
Bytes per tile and decode rates of each: `benchmarks/input_pipeline.py`.
"""

import contextlib
import io
import pathlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any
from unittest import mock

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image
from tensorflow_datasets.core import example_serializer

_SPLIT_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


IMAGE_ENCODINGS = ("raw", "bytes", "zlib", "png", "jpeg")
JPEG_QUALITY = 90  # lossy: a data set stored as JPEG trains on different pixels than its raw twin


def image_feature(tile_size: int, encoding: str = "raw") -> tfds.features.FeatureConnector:
    """The `image` feature, uint8 (T, T, 3), stored as: "raw" TFDS's default Tensor (an int64 list: a varint of
    1-2 bytes per value), "bytes" one byte per value, "zlib" those bytes compressed, "png" / "jpeg" image bytes."""
    shape = (tile_size, tile_size, 3)
    if encoding == "raw":
        return tfds.features.Tensor(shape=shape, dtype=np.uint8)
    if encoding in ("bytes", "zlib"):
        stored = tfds.features.Encoding.BYTES if encoding == "bytes" else tfds.features.Encoding.ZLIB
        return tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding=stored)
    if encoding in ("png", "jpeg"):
        return tfds.features.Image(shape=shape, dtype=np.uint8, encoding_format=encoding)
    raise ValueError(f"image_encoding={encoding!r}; choose one of {IMAGE_ENCODINGS}.")


def encode_image(image: np.ndarray, encoding: str = "raw") -> np.ndarray | bytes:
    """What `image_feature(..., encoding)` is given for uint8 `image`: the array itself, or PNG / JPEG bytes
    (Pillow; JPEG at JPEG_QUALITY with full-resolution chroma, 4:4:4: stain colour is the signal)."""
    if encoding in ("raw", "bytes", "zlib"):
        return image
    if encoding not in ("png", "jpeg"):
        raise ValueError(f"image_encoding={encoding!r}; choose one of {IMAGE_ENCODINGS}.")
    buffer = io.BytesIO()
    options = {"quality": JPEG_QUALITY, "subsampling": 0} if encoding == "jpeg" else {"compress_level": 6}
    Image.fromarray(image).save(buffer, format=encoding.upper(), **options)
    return buffer.getvalue()


def example_features(
    tile_size: int,
    site_names: Sequence[str] | None,
    label_names: Sequence[str] | None,
    *,
    label_doc: str = "",
    image_encoding: str = "raw",
) -> tfds.features.FeaturesDict:
    """The shared example schema; `label_names=None` stores `label` as a plain int64 (so -1 = unlabelled fits).

    `site_names=None` leaves the site names to be set in `_split_generators` (data sets whose domains are data).
    `image_encoding` (IMAGE_ENCODINGS) is how images are stored; feed them through `encode_image`.
    """
    if label_names is None:
        label = tfds.features.Scalar(dtype=np.int64, doc=label_doc or "task label; -1 = unlabelled")
    else:
        label = tfds.features.ClassLabel(names=list(label_names))
    return tfds.features.FeaturesDict(
        {
            "image": image_feature(tile_size, image_encoding),
            "label": label,
            "site": tfds.features.ClassLabel(names=list(site_names) if site_names is not None else None),
            "region": tfds.features.Scalar(dtype=np.int64),
            "coords": tfds.features.Tensor(shape=(2,), dtype=np.int64),
            "tile_id": tfds.features.Scalar(dtype=np.int64),
        }
    )


def _serialize_sorted(self: example_serializer.ExampleSerializer, example: Any) -> bytes:
    """tf.Example bytes with map entries sorted by key (TFDS's default order follows per-process hashing)."""
    return self.get_tf_example(example).SerializeToString(deterministic=True)


@contextlib.contextmanager
def deterministic_serialization() -> Iterator[None]:
    """Within the block TFDS serialises examples byte-identically from process to process."""
    with mock.patch.object(example_serializer.ExampleSerializer, "serialize_example", _serialize_sorted):
        yield


def prepare(
    builder: tfds.core.DatasetBuilder,
    manual_dir: str | pathlib.Path | None = None,
    validate: Callable[[pathlib.Path], object] | None = None,
) -> pathlib.Path:
    """Write `builder` as array_record (byte-identical rebuilds) unless already built; returns its version dir.

    `validate(manual_dir)` runs first so that a wrong layout fails with the builder's own message, before
    TFDS wraps errors; it implies that `manual_dir` is required.
    """
    version_dir = pathlib.Path(builder.data_dir)
    if (version_dir / "dataset_info.json").is_file():
        return version_dir
    if validate is not None:
        if manual_dir is None:
            raise ValueError(
                f"Data set {builder.name} is built from files you download: pass manual_dir.\n"
                f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        validate(pathlib.Path(manual_dir))
    download_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir is not None else None)
    download_dir = version_dir.parents[2] / "downloads"  # <data_dir>/downloads, as TFDS lays it out
    with deterministic_serialization():
        builder.download_and_prepare(
            download_dir=str(download_dir), file_format="array_record", download_config=download_config
        )
    return version_dir


def require(path: pathlib.Path, what: str, instructions: str) -> pathlib.Path:
    """`path` if it exists, else FileNotFoundError naming the expected path, what belongs there and how to get it."""
    if not path.exists():
        raise FileNotFoundError(f"Expected {what} at {path}, but it does not exist.\n{instructions.strip()}")
    return path


def read_rgb(path: pathlib.Path) -> np.ndarray:
    """Pixels of an image file as uint8 (H, W, 3); ValueError naming the file when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError... for truncated or corrupt files
        raise ValueError(f"Cannot decode image {path} ({type(err).__name__}: {err}).") from err


def fit_square(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Resize so the shorter side is `size` (Pillow bicubic, antialiased), centre-crop to size x size.

    Returns the tile and the crop's top-left (y, x) in the input's pixels. A size x size input is returned as is.
    """
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return image, (0, 0)
    scale = size / min(height, width)
    new_h, new_w = max(size, round(height * scale)), max(size, round(width * scale))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top : top + size, left : left + size], (round(top / scale), round(left / scale))


def grid_origins(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of the non-overlapping size x size tiles of a centred grid, row-major; [] if none fits."""
    rows, cols = height // size, width // size
    top, left = (height - rows * size) // 2, (width - cols * size) // 2
    return [(top + r * size, left + c * size) for r in range(rows) for c in range(cols)]


def split_groups(strata: Mapping[str, str], test_fraction: float, seed: int) -> frozenset[str]:
    """The groups (patients, slides) drawn for the test split: round(test_fraction * n) of each stratum.

    `strata` maps group -> stratum (e.g. patient -> class). Within each stratum (sorted by name) the groups
    are sorted and permuted by one `np.random.default_rng(seed)` stream, so the draw depends only on the
    set of groups, the fraction and the seed. Strata with >= 2 groups give each side at least one group.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}.")
    rng = np.random.default_rng(seed)
    test: set[str] = set()
    for stratum in sorted(set(strata.values())):
        groups = sorted(group for group, value in strata.items() if value == stratum)
        n_test = min(max(round(test_fraction * len(groups)), 1), len(groups) - 1) if len(groups) > 1 else 0
        test.update(groups[i] for i in rng.permutation(len(groups))[:n_test])
    return frozenset(test)


def check_split_name(name: str, source: str) -> str:
    """`name` if usable as a TFDS split name, else ValueError naming where it came from."""
    if not _SPLIT_NAME.match(name) or name == "all":
        raise ValueError(
            f"Split name {name!r} from {source} is not a valid TFDS split name: use letters, digits and "
            "underscores, starting with a letter (and not 'all')."
        )
    return name


def log_skip(path: pathlib.Path, reason: str, root: pathlib.Path) -> dict[str, str]:
    """Log a skipped input file; returns the record kept in the data set's metadata (path relative to `root`)."""
    logging.warning("Skipping %s: %s", path, reason)
    return {"path": str(path.relative_to(root)) if path.is_relative_to(root) else str(path), "reason": reason}
