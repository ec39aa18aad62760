"""TFDS builder `folder_csv`: any image folder indexed by a CSV with `path,label,domain,patient` columns.

`manual_dir` holds `index.csv` (UTF-8) and the images; `path` is relative to the CSV's folder (absolute paths work
too) and must lie inside that folder unless the config sets `allow_outside=True`.
Columns (header names exact; other columns are ignored):
    path     image file readable by Pillow (PNG, JPEG, TIFF, ...), converted to RGB
    label    integer class (empty or -1 = unlabelled), or class names (sorted names -> 0, 1, ...; empty = -1)
    domain   site / scanner / stain / centre name -> `site` (ClassLabel, names sorted)
    patient  group key -> `region` (rank of the sorted patient names)
    split    optional: the split of each row (e.g. train / val / test). Without it the builder draws a
             patient-disjoint `train` / `test` split: `test_fraction` (0.2) of the sorted patients, permuted
             with `seed` (0) by `common.split_groups`.
Configs tile64 / tile96 / tile224 resize each image so its shorter side is the tile size and centre-crop it
(an image already of that size is stored as is); a config with `mode="tile"` instead cuts a centred grid of
native-resolution tiles. Skips are warned about and listed, with the reason, under "skipped" in the data set's
`metadata.json`, and counted by kind under "skip_counts": files that exist but cannot be decoded, images
smaller than a tile in tile mode, and rows naming a file an earlier row already named (the later row is
skipped). A config with `strict=True` makes any skip fatal. Missing files, paths outside the folder and a CSV
that is not UTF-8 stop the build with a one-line DataError (a ValueError) naming the file, the line and the fix.
`metadata.json` also records `label_names` (null for integer labels).
`tile_id` = 10,000 x (CSV data row, from 0) + tile index; `coords` = the tile's top-left (y, x) in the image.
"""

import csv
import dataclasses
import io
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from data_pipelines.build import DataError  # a ValueError the build command line prints as one `error:` line
from data_pipelines.builders import common

INDEX_NAME = "index.csv"
REQUIRED_COLUMNS = ("path", "label", "domain", "patient")
_MAX_TILES_PER_IMAGE = 10_000
SKIP_KINDS = ("duplicate row", "cannot decode", "smaller than one tile")
"""The kinds of skip counted under "skip_counts" in metadata.json (each record's reason starts with its kind)."""

MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
Put your images in a folder (manual_dir) together with `{INDEX_NAME}`, a CSV whose header holds the columns
{', '.join(REQUIRED_COLUMNS)} (and optionally split), one row per image, e.g.
    path,label,domain,patient
    images/p01_a.png,tumour,scanner_A,p01
    images/p01_b.png,normal,scanner_B,p01
"""


@dataclasses.dataclass(frozen=True)
class Row:
    """One CSV data row; `number` is its position among the data rows (from 0), `line` its line in the file."""

    number: int
    path: pathlib.Path
    label: str
    domain: str
    patient: str
    split: str | None
    line: int = 0


@dataclasses.dataclass(frozen=True)
class Index:
    """The rows to build, and the skipped rows' records ({"path", "reason"}, path relative to the CSV's folder)."""

    rows: list[Row]
    skipped: list[dict[str, str]]


def _read_text(csv_path: pathlib.Path) -> str:
    """The CSV's text (UTF-8, with or without BOM); ValueError naming the file, line and byte that is not UTF-8."""
    data = csv_path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise DataError(
            f"{csv_path} line {line}: byte {data[error.start]:#04x} is not UTF-8 ({error.reason}); "
            "save the CSV as UTF-8 (e.g. from a Latin-1 / Windows-1252 export)."
        ) from None


def _skip_duplicate(csv_path: pathlib.Path, line: int, path: pathlib.Path, first: int, strict: bool) -> dict[str, str]:
    """The record of a row naming the file of an earlier row (logged), or ValueError when `strict`."""
    if strict:
        raise DataError(f"{csv_path} line {line}: {path} was already named on line {first}; remove the duplicate "
                         "row, or build with strict=False to skip it (skips are counted in metadata.json).")
    return common.log_skip(path, f"duplicate row (line {line} names the file of line {first})", csv_path.parent)


def read_index(csv_path: pathlib.Path, *, allow_outside: bool = False, strict: bool = False) -> Index:
    """The rows of `index.csv`; ValueError naming the line of an empty required value, of a path outside the CSV's
    folder (unless `allow_outside`) or of a byte that is not UTF-8, or naming missing columns. A row naming the
    same file as an earlier one is skipped (ValueError when `strict`)."""
    reader = csv.DictReader(io.StringIO(_read_text(csv_path), newline=""))
    header = [name.strip() for name in reader.fieldnames or []]
    missing = [name for name in REQUIRED_COLUMNS if name not in header]
    if missing:
        raise DataError(
            f"{csv_path}: missing column(s) {missing}; found {header}. The header must name "
            f"{', '.join(REQUIRED_COLUMNS)} (optionally split)."
        )
    reader.fieldnames = header
    has_split = "split" in header
    folder = pathlib.Path(os.path.normpath(csv_path.parent.absolute()))
    rows, skipped, first_line = [], [], {}
    for number, record in enumerate(reader):
        line = reader.line_num
        values = {key: (record.get(key) or "").strip() for key in (*REQUIRED_COLUMNS, "split")}
        empty = [key for key in ("path", "domain", "patient", "split") if key in header and not values[key]]
        if empty:
            raise DataError(f"{csv_path} line {line}: empty {empty}; only `label` may be empty.")
        path = pathlib.Path(os.path.normpath(folder / values["path"]))  # an absolute path replaces the folder
        if not allow_outside and not path.is_relative_to(folder):
            raise DataError(
                f"{csv_path} line {line}: path {values['path']!r} lies outside the CSV's folder {folder}; move the "
                "file into that folder, or build with FolderCsvConfig(allow_outside=True)."
            )
        if path in first_line:
            skipped.append(_skip_duplicate(csv_path, line, path, first_line[path], strict))
            continue
        first_line[path] = line
        rows.append(Row(number, path, values["label"], values["domain"], values["patient"],
                        values["split"] if has_split else None, line))
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows.")
    return Index(rows, skipped)


def encode_labels(values: list[str]) -> tuple[dict[str, int], list[str] | None]:
    """(value -> int64 label, class names or None): integers as is, else sorted names; empty -> -1."""
    present = sorted({v for v in values if v})
    try:
        numbers = {v: int(v) for v in present}
    except ValueError:
        if "-1" in present:
            raise DataError("Labels mix names with -1; mark unlabelled rows with an empty label.") from None
        return {"": -1, **{name: index for index, name in enumerate(present)}}, present
    if any(n < -1 for n in numbers.values()):
        raise DataError(f"Integer labels must be >= 0 (or -1 = unlabelled); got {sorted(set(numbers.values()))}.")
    return {"": -1, **numbers}, None


def validate(manual_dir: pathlib.Path, config: "FolderCsvConfig | None" = None) -> Index:
    """The index when `manual_dir/index.csv` is well formed and every file it names exists; else raise.

    `config` gives `allow_outside` and `strict` (both False without one)."""
    csv_path = common.require(manual_dir / INDEX_NAME, "the image index CSV", MANUAL_DOWNLOAD_INSTRUCTIONS)
    index = read_index(csv_path, allow_outside=getattr(config, "allow_outside", False),
                       strict=getattr(config, "strict", False))
    rows = index.rows
    encode_labels([row.label for row in rows])
    missing = [str(row.path) for row in rows if not row.path.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} file(s) named in {csv_path} do not exist, e.g. {missing[:5]}; "
            "paths are relative to the CSV's folder."
        )
    for split in sorted({row.split for row in rows if row.split is not None}):
        common.check_split_name(split, f"the split column of {csv_path}")
    return index


@dataclasses.dataclass(eq=False)
class FolderCsvConfig(tfds.core.BuilderConfig):
    """`mode` "resize" (fit each image into one tile) or "tile" (native-resolution grid); split parameters;
    `allow_outside` accepts CSV paths outside the CSV's folder; `strict` makes any skipped row or image fatal."""

    tile_size: int = 224
    mode: str = "resize"
    test_fraction: float = 0.2
    seed: int = 0
    allow_outside: bool = False
    strict: bool = False


def _config(tile_size: int) -> FolderCsvConfig:
    return FolderCsvConfig(
        name=f"tile{tile_size}", description=f"Each image resized and centre-cropped to {tile_size}px.",
        tile_size=tile_size,
    )


class Builder(tfds.core.GeneratorBasedBuilder):
    """Images indexed by a CSV: label, domain as site, patient as region."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "path,label,domain,patient[,split] index; corrupt images skipped and listed."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [_config(64), _config(96), _config(224)]
    DEFAULT_CONFIG_NAME = "tile224"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.example_features(
                self.builder_config.tile_size, None, None,
                label_doc="CSV label: integer as given, or rank of the sorted label names (metadata.json); -1 = none",
            ),
            supervised_keys=None,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        cfg = self.builder_config
        if cfg.mode not in ("resize", "tile"):
            raise DataError(f"FolderCsvConfig {cfg.name!r}: mode must be 'resize' or 'tile', got {cfg.mode!r}.")
        manual_dir = pathlib.Path(dl_manager.manual_dir)
        index = validate(manual_dir, cfg)
        rows = index.rows
        labels, label_names = encode_labels([row.label for row in rows])
        domains = sorted({row.domain for row in rows})
        self.info.features["site"].names = domains
        self.info.metadata.update(
            {"label_names": label_names, "skipped": [], "skip_counts": dict.fromkeys(SKIP_KINDS, 0)}
        )
        for record in index.skipped:
            self._record_skip(record)
        if rows[0].split is None:
            test = common.split_groups({row.patient: "all" for row in rows}, cfg.test_fraction, cfg.seed)
            split_of = {row.number: "test" if row.patient in test else "train" for row in rows}
        else:
            split_of = {row.number: row.split for row in rows}
            splits_of_patient: dict[str, set[str]] = {}
            for row in rows:
                splits_of_patient.setdefault(row.patient, set()).add(row.split)
            shared = sorted(patient for patient, splits in splits_of_patient.items() if len(splits) > 1)
            if shared:
                logging.warning("Patients %s appear in more than one split of the CSV's split column.", shared)
        regions = {patient: index for index, patient in enumerate(sorted({row.patient for row in rows}))}
        context = {"labels": labels, "domains": domains, "regions": regions, "manual_dir": manual_dir}
        return {
            split: self._generate_examples([row for row in rows if split_of[row.number] == split], **context)
            for split in sorted(set(split_of.values()))
        }

    def _record_skip(self, record: dict[str, str]) -> None:
        """List a skip in metadata.json and count it by kind."""
        self.info.metadata["skipped"].append(record)
        kind = next(kind for kind in SKIP_KINDS if record["reason"].startswith(kind))
        self.info.metadata["skip_counts"][kind] += 1

    def _skip_image(self, row: Row, reason: str, manual_dir: pathlib.Path) -> None:
        """Skip an image (ValueError naming it when the config is strict)."""
        if self.builder_config.strict:
            raise DataError(f"{row.path} (index line {row.line}): {reason}; fix or remove the file, or build with "
                             "strict=False to skip it (skips are counted in metadata.json).")
        self._record_skip(common.log_skip(row.path, reason, manual_dir))

    def _tiles(self, image: np.ndarray, path: pathlib.Path) -> list[tuple[np.ndarray, tuple[int, int]]]:
        """The config's tiles of one image with their top-left (y, x) in the image."""
        size = self.builder_config.tile_size
        if self.builder_config.mode == "resize":
            return [common.fit_square(image, size)]
        origins = common.grid_origins(*image.shape[:2], size)
        if len(origins) > _MAX_TILES_PER_IMAGE:
            raise DataError(
                f"{path} gives {len(origins)} tiles of {size}px, more than {_MAX_TILES_PER_IMAGE}: index smaller "
                "images, use a larger tile or mode='resize' (whole slides belong in a WSI builder such as camelyon16)."
            )
        return [(image[y : y + size, x : x + size], (y, x)) for y, x in origins]

    def _generate_examples(
        self,
        rows: list[Row],
        labels: dict[str, int],
        domains: list[str],
        regions: dict[str, int],
        manual_dir: pathlib.Path,
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Tiles of each readable image in CSV order; unreadable images are logged and listed in the metadata."""
        for row in rows:
            try:
                image = common.read_rgb(row.path)
            except ValueError as err:  # the log line has the decoder's message; the record stays path-free
                logging.warning("%s", err)
                self._skip_image(row, f"cannot decode ({type(err.__cause__).__name__})", manual_dir)
                continue
            tiles = self._tiles(image, row.path)
            if not tiles:
                self._skip_image(row, "smaller than one tile", manual_dir)
            for index, (tile, origin) in enumerate(tiles):
                tile_id = row.number * _MAX_TILES_PER_IMAGE + index
                yield tile_id, {
                    "image": np.ascontiguousarray(tile),
                    "label": labels[row.label],
                    "site": domains.index(row.domain),
                    "region": regions[row.patient],
                    "coords": np.asarray(origin, np.int64),
                    "tile_id": tile_id,
                }
