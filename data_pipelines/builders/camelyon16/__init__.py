"""Camelyon16 (`camelyon16`) and `build_dataset`, which samples patches once from the downloaded training WSIs."""

import pathlib

from data_pipelines.builders import common
from data_pipelines.builders.camelyon16.camelyon16_dataset_builder import Builder, Camelyon16Config, validate

__all__ = ["Builder", "Camelyon16Config", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path, *, config: str | Camelyon16Config = "tile96"
) -> pathlib.Path:
    """Build `camelyon16/<config>` under `data_dir` from `manual_dir`; a no-op when built. Returns its dir.

    Skipped slides (tumour slides without annotations) are listed in `<returned dir>/metadata.json`.
    """
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    return common.prepare(builder, manual_dir, validate=validate)
