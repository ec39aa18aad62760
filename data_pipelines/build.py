"""Command line: build one TFDS data set (array_record) from files the user downloaded.

    python -m data_pipelines.build --name camelyon17_wilds --manual_dir DIR --data_dir DIR [--config NAME]

Prints the built directory and the number of examples per split. Building again is a no-op.
"""

import argparse
import importlib
import pathlib
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

BUILDERS_DIR = pathlib.Path(__file__).resolve().parent / "builders"


def available() -> list[str]:
    """Names of the data sets under data_pipelines/builders/ (one package each)."""
    return sorted(path.parent.name for path in BUILDERS_DIR.glob("*/__init__.py"))


def build(
    name: str, data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path | None = None, config: str | None = None
) -> pathlib.Path:
    """Build data set `name` (config `config`, else its default) under `data_dir`; returns the version directory."""
    if name not in available():
        raise ValueError(f"Unknown data set {name!r}; available: {', '.join(available())}.")
    module = importlib.import_module(f"data_pipelines.builders.{name}")
    kwargs = {} if config is None else {"config": config}
    if getattr(module.Builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        if manual_dir is None:
            raise ValueError(
                f"{name} is built from files you download: pass --manual_dir.\n"
                f"{module.Builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
            )
        return module.build_dataset(data_dir, manual_dir, **kwargs)
    if manual_dir is not None:
        raise ValueError(f"{name} ships with the package and takes no --manual_dir.")
    return module.build_dataset(data_dir, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build, print the split sizes."""
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help=f"data set: {', '.join(available())}")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write (config.data.data_dir)")
    parser.add_argument("--manual_dir", default=None, help="folder holding the downloaded files")
    parser.add_argument("--config", default=None, help="builder config name (default: the builder's default)")
    args = parser.parse_args(argv)
    version_dir = build(args.name, args.data_dir, args.manual_dir, args.config)
    splits = tfds.builder_from_directory(str(version_dir)).info.splits
    print(f"Built {version_dir}")
    for split_name in sorted(splits):
        print(f"  {split_name}: {splits[split_name].num_examples} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
