"""The embedded default data set `cmu_small_region` and `build_dataset`, which prepares it once as array_record."""

import pathlib
from typing import Any
from unittest import mock

from tensorflow_datasets.core import example_serializer

from data_pipelines import tiling
from data_pipelines.builders.cmu_small_region.cmu_small_region_dataset_builder import Builder, CmuSmallRegionConfig

__all__ = ["Builder", "CmuSmallRegionConfig", "build_dataset"]


def _serialize_sorted(self: example_serializer.ExampleSerializer, example: Any) -> bytes:
    """tf.Example bytes with map entries sorted by key (TFDS's default order follows per-process hashing)."""
    return self.get_tf_example(example).SerializeToString(deterministic=True)


def build_dataset(
    data_dir: str | pathlib.Path, tile_size: int = 64, *, config: str | CmuSmallRegionConfig | None = None
) -> None:
    """Build `cmu_small_region/tile{tile_size}` (or `config`, a name or a config) under `data_dir` as array_record.

    A no-op when already built. The files are byte-identical from build to build and process to process.
    """
    builder = Builder(config=config or f"tile{tile_size}", data_dir=str(data_dir), file_format="array_record")
    if (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file():
        return
    tiling.locate_cmu_slide()  # raises with the pip fix before TFDS wraps the error
    with mock.patch.object(example_serializer.ExampleSerializer, "serialize_example", _serialize_sorted):
        builder.download_and_prepare(download_dir=str(pathlib.Path(data_dir) / "downloads"), file_format="array_record")
