"""MIDOG 2021 (`midog`) and `build_dataset`, which prepares it once from the downloaded images and MIDOG.json."""

import pathlib

from data_pipelines.builders import common
from data_pipelines.builders.midog.midog_dataset_builder import Builder, MidogConfig, validate

__all__ = ["Builder", "MidogConfig", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path, *, config: str | MidogConfig = "tile128"
) -> pathlib.Path:
    """Build `midog/<config>` under `data_dir` from `manual_dir`; a no-op when built. Returns its dir."""
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    return common.prepare(builder, manual_dir, validate=validate)
