"""Camelyon17-WILDS (`camelyon17_wilds`) and `build_dataset`, which prepares it once from the unpacked download."""

import pathlib

from data_pipelines.builders import common
from data_pipelines.builders.camelyon17_wilds.camelyon17_wilds_dataset_builder import (
    Builder,
    Camelyon17Config,
    locate_root,
)

__all__ = ["Builder", "Camelyon17Config", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path, *, config: str | Camelyon17Config = "tile96"
) -> pathlib.Path:
    """Build `camelyon17_wilds/<config>` under `data_dir` from `manual_dir`; a no-op when built. Returns its dir."""
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    return common.prepare(builder, manual_dir, validate=locate_root)
