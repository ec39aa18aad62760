"""Command line: build one TFDS data set (array_record) from files the user downloaded.

    python -m data_pipelines.build --name camelyon17_wilds --manual_dir DIR --data_dir DIR [--config NAME]

Prints the built directory and the number of examples per split. Building again is a no-op. A wrong name,
folder or missing download ends in one line, `error: ...`, naming it and the fix (`--debug` shows the traceback).
"""

import argparse
import importlib
import pathlib
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

BUILDERS_DIR = pathlib.Path(__file__).resolve().parent / "builders"


class DataError(ValueError):
    """A data set name, data dir or download folder that cannot work; the message names it and the fix.

    `lmc_jax.main` and this command line print it as one `error:` line (data_pipelines knows nothing of lmc_jax,
    so this is not an `lmc_jax.errors.UserError`; main catches both).
    """


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def available() -> list[str]:
    """Names of the data sets under data_pipelines/builders/ (one package each)."""
    return sorted(path.parent.name for path in BUILDERS_DIR.glob("*/__init__.py"))


def build(
    name: str, data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path | None = None, config: str | None = None
) -> pathlib.Path:
    """Build data set `name` (config `config`, else its default) under `data_dir`; returns the version directory."""
    if name not in available():
        raise DataError(f"Unknown data set {name!r}: choose one of {', '.join(available())} "
                        "(one folder each under data_pipelines/builders/).")
    module = importlib.import_module(f"data_pipelines.builders.{name}")
    kwargs = {} if config is None else {"config": config}
    configs = [c.name for c in getattr(module.Builder, "BUILDER_CONFIGS", [])]
    if isinstance(config, str) and configs and config not in configs:
        raise DataError(f"Unknown builder config {config!r} of {name}: choose one of {', '.join(configs)} (--config "
                        "here; in a run config.data.builder_config, or config.data.tile_size for tile<size>).")
    layout = f"the download steps and layout: data_pipelines/builders/{name}/ (MANUAL_DOWNLOAD_INSTRUCTIONS)"
    if getattr(module.Builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None):
        if manual_dir is None:
            raise DataError(f"{name} is built from files you download: pass --manual_dir <their folder> "
                            f"(config.data.manual_dir); {layout}.")
        if not pathlib.Path(manual_dir).is_dir():
            raise DataError(f"manual_dir {str(manual_dir)!r} is not a folder: pass the folder holding the "
                            f"downloaded {name} files; {layout}.")
        try:
            return module.build_dataset(data_dir, manual_dir, **kwargs)
        except FileNotFoundError as error:  # the builder's layout check: a file of the download is missing
            raise DataError(f"{_first_line(error)} Fix the folder given as manual_dir; {layout}.") from error
    if manual_dir is not None:
        raise DataError(f"{name} ships with the package and takes no --manual_dir: drop it.")
    return module.build_dataset(data_dir, **kwargs)


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, build, print the split sizes."""
    parser = argparse.ArgumentParser(prog="python -m data_pipelines.build", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help=f"data set: {', '.join(available())}")
    parser.add_argument("--data_dir", required=True, help="TFDS data dir to write (config.data.data_dir)")
    parser.add_argument("--manual_dir", default=None, help="folder holding the downloaded files")
    parser.add_argument("--config", default=None, help="builder config name (default: the builder's default)")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    args = parser.parse_args(argv)
    try:
        version_dir = build(args.name, args.data_dir, args.manual_dir, args.config)
    except DataError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 1
    splits = tfds.builder_from_directory(str(version_dir)).info.splits
    print(f"Built {version_dir}")
    for split_name in sorted(splits):
        print(f"  {split_name}: {splits[split_name].num_examples} examples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
