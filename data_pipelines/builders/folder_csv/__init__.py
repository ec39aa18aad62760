"""Image folder + CSV index (`folder_csv`) and `build_dataset`, which prepares it once from `manual_dir`."""

import pathlib

from data_pipelines.builders import common
from data_pipelines.builders.folder_csv.folder_csv_dataset_builder import Builder, FolderCsvConfig, validate

__all__ = ["Builder", "FolderCsvConfig", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path, *, config: str | FolderCsvConfig = "tile224"
) -> pathlib.Path:
    """Build `folder_csv/<config>` under `data_dir` from `manual_dir/index.csv`; a no-op when built. Returns its dir.

    Skipped (undecodable) images are listed in `<returned dir>/metadata.json`.
    """
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    return common.prepare(builder, manual_dir, validate=validate)
