"""BreaKHis (`breakhis`) and `build_dataset`, which prepares it once from the unpacked download."""

import pathlib

from data_pipelines.builders import common
from data_pipelines.builders.breakhis.breakhis_dataset_builder import BreakhisConfig, Builder, validate

__all__ = ["BreakhisConfig", "Builder", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path, *, config: str | BreakhisConfig = "tile224"
) -> pathlib.Path:
    """Build `breakhis/<config>` under `data_dir` from `manual_dir`; a no-op when built. Returns its dir."""
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    return common.prepare(builder, manual_dir, validate=validate)
