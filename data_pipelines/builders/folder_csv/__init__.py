"""Image folder + CSV index (`folder_csv`) and `build_dataset`, which prepares it once from `manual_dir`."""

import functools
import json
import pathlib

from absl import logging

from data_pipelines.builders import common
from data_pipelines.builders.folder_csv.folder_csv_dataset_builder import Builder, FolderCsvConfig, validate

__all__ = ["Builder", "FolderCsvConfig", "build_dataset"]


def build_dataset(
    data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path, *, config: str | FolderCsvConfig = "tile224"
) -> pathlib.Path:
    """Build `folder_csv/<config>` under `data_dir` from `manual_dir/index.csv`; a no-op when built. Returns its dir.

    Skipped rows and images (duplicate rows, undecodable files, images smaller than a tile) are listed under
    "skipped" and counted by kind under "skip_counts" in `<returned dir>/metadata.json`, and the counts are logged.
    """
    builder = Builder(config=config, data_dir=str(data_dir), file_format="array_record")
    check = functools.partial(validate, config=builder.builder_config)
    version_dir = common.prepare(builder, manual_dir, validate=check)
    counts = json.loads((version_dir / "metadata.json").read_text()).get("skip_counts", {})
    logging.info("folder_csv %s: %d skipped %s; listed in %s", version_dir, sum(counts.values()), counts,
                 version_dir / "metadata.json")
    return version_dir
