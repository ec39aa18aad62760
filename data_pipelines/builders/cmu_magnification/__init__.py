"""The embedded magnification-shift data set `cmu_magnification` and `build_dataset`, which prepares it once."""

import pathlib

from data_pipelines.builders.cmu_magnification.cmu_magnification_dataset_builder import (
    Builder,
    CmuMagnificationConfig,
)
from data_pipelines.builders.cmu_small_region import SlideMissingError, prepare_from_slide  # the same slide

__all__ = ["Builder", "CmuMagnificationConfig", "SlideMissingError", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, *, config: str | CmuMagnificationConfig = "tile64"
) -> pathlib.Path:
    """Build `cmu_magnification/<config>` (a name or a config) under `data_dir` as array_record; no manual_dir.

    A no-op when already built. The files are byte-identical from build to build and process to process.
    Returns the version directory.
    """
    return prepare_from_slide(Builder(config=config, data_dir=str(data_dir), file_format="array_record"))
