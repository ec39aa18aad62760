"""TFDS builder `camelyon17_wilds`: the 96x96 lymph-node patches of Camelyon17-WILDS, five hospitals as sites.

Reads the unpacked WILDS folder (`camelyon17_v1.0/`: `metadata.csv` + `patches/`) from `manual_dir`; nothing is
downloaded. Data licence: CC0 (the CAMELYON17 challenge data and its WILDS patch version).

Configs:
    tile96     the official WILDS splits: `train` (centres 0, 3, 4, split code 0), `id_val` (centres 0, 3, 4,
               split code 1), `val` (OOD centre 1), `test` (OOD centre 2): 302,436 / 33,560 / 34,904 / 85,054.
    centres96  one split per hospital, `center_0` ... `center_4`, for leave-one-centre-out runs
               (combine them with TFDS split arithmetic, e.g. "center_0+center_3+center_4").
Example fields: `label` = tumour in the central 32x32 (metadata `tumor`); `site` = centre (`center_0`..`center_4`);
`region` = patient number (each patient's five lymph-node slides share it; centres hold disjoint patients);
`coords` = (y_coord, x_coord) of the patch in its slide; `tile_id` = the metadata row index.
WILDS's official train and id_val share patients (they split patches, not patients); use `region` for
patient-disjoint folds.
"""

import csv
import dataclasses
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import common

PATCH_SIZE = 96
CENTRES = 5
OOD_VAL_CENTRE, TEST_CENTRE = 1, 2  # WILDS's 0-indexed numbering
_COLUMNS = ("patient", "node", "x_coord", "y_coord", "tumor", "slide", "center", "split")
_ID_SPLITS = {0: "train", 1: "id_val"}  # WILDS split codes of the in-distribution centres

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download Camelyon17-WILDS (e.g. `pip install wilds` then
`python -c "from wilds import get_dataset; get_dataset('camelyon17', download=True, root_dir='DIR')"`,
or the archive from https://wilds.stanford.edu/datasets/) and pass as manual_dir the unpacked folder
`camelyon17_v1.0/` (or its parent). It must hold
    metadata.csv                       (index column, patient, node, x_coord, y_coord, tumor, slide, center, split)
    patches/patient_{p}_node_{n}/patch_patient_{p}_node_{n}_x_{x}_y_{y}.png   (96x96 RGB)
"""


@dataclasses.dataclass(frozen=True)
class PatchRecord:
    """One metadata row: where the patch is and what it is."""

    index: int
    patient: str
    node: int
    x: int
    y: int
    tumor: int
    center: int
    split: int

    def path(self, root: pathlib.Path) -> pathlib.Path:
        """Where WILDS stores this patch under `root` (the camelyon17_v1.0 folder)."""
        folder = f"patient_{self.patient}_node_{self.node}"
        return root / "patches" / folder / f"patch_{folder}_x_{self.x}_y_{self.y}.png"


def locate_root(manual_dir: pathlib.Path) -> pathlib.Path:
    """The folder holding `metadata.csv`: `manual_dir` itself or `manual_dir/camelyon17_v1.0`."""
    candidates = (manual_dir, manual_dir / "camelyon17_v1.0")
    for root in candidates:
        if (root / "metadata.csv").is_file():
            return root
    raise FileNotFoundError(
        f"No Camelyon17-WILDS metadata.csv in {' or '.join(str(c) for c in candidates)}.\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    )


def read_metadata(path: pathlib.Path) -> list[PatchRecord]:
    """Rows of `metadata.csv` (patient kept as its zero-padded string); ValueError naming missing columns/values."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [name for name in _COLUMNS if name not in header]
        if missing or not header or header[0] in _COLUMNS:
            raise ValueError(
                f"{path}: expected an unnamed index column then {', '.join(_COLUMNS)}; header is {header}, "
                f"missing {missing or 'the index column'}. Use the metadata.csv that ships with camelyon17_v1.0."
            )
        index_column = header[0]
        try:
            return [
                PatchRecord(
                    index=int(row[index_column]), patient=row["patient"], node=int(row["node"]),
                    x=int(row["x_coord"]), y=int(row["y_coord"]), tumor=int(row["tumor"]),
                    center=int(row["center"]), split=int(row["split"]),
                )
                for row in reader
            ]
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"{path} line {reader.line_num}: {err}; expected integers in every column but patient."
            ) from err


def split_name(record: PatchRecord, by_centre: bool) -> str:
    """The split a patch goes to: its centre's (`by_centre`) or WILDS's official one."""
    return f"center_{record.center}" if by_centre else official_split(record)


def official_split(record: PatchRecord) -> str:
    """WILDS's split of a patch: OOD centres by centre, the others by their split code."""
    if record.center == OOD_VAL_CENTRE:
        return "val"
    if record.center == TEST_CENTRE:
        return "test"
    if record.split not in _ID_SPLITS:
        raise ValueError(
            f"metadata row {record.index}: split code {record.split} for in-distribution centre {record.center}; "
            f"expected one of {sorted(_ID_SPLITS)} (train, id_val)."
        )
    return _ID_SPLITS[record.split]


@dataclasses.dataclass(eq=False)
class Camelyon17Config(tfds.core.BuilderConfig):
    """`by_centre`: one split per hospital instead of WILDS's official splits."""

    by_centre: bool = False


class Builder(tfds.core.GeneratorBasedBuilder):
    """Camelyon17-WILDS patches: tumour label, hospital as site, patient as region."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Official WILDS splits (tile96) and per-centre splits (centres96)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        Camelyon17Config(name="tile96", description="Official WILDS splits: train, id_val, val (OOD), test (OOD)."),
        Camelyon17Config(name="centres96", description="One split per centre: center_0 ... center_4.", by_centre=True),
    ]
    DEFAULT_CONFIG_NAME = "tile96"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.example_features(
                PATCH_SIZE, [f"center_{c}" for c in range(CENTRES)], ["normal", "tumor"]
            ),
            supervised_keys=None,
            disable_shuffling=True,
            homepage="https://wilds.stanford.edu/datasets/#camelyon17",
            license="CC0 1.0",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        root = locate_root(pathlib.Path(dl_manager.manual_dir))
        records = read_metadata(root / "metadata.csv")
        by_centre = self.builder_config.by_centre
        names = [f"center_{c}" for c in range(CENTRES)] if by_centre else ["train", "id_val", "val", "test"]
        bad_centres = sorted({r.center for r in records} - set(range(CENTRES)))
        if bad_centres:
            raise ValueError(f"{root / 'metadata.csv'}: centres {bad_centres} outside 0..{CENTRES - 1}.")
        by_split: dict[str, list[PatchRecord]] = {name: [] for name in names}
        for record in records:
            by_split[split_name(record, by_centre)].append(record)
        return {name: self._generate_examples(root, rows) for name, rows in by_split.items()}

    def _generate_examples(
        self, root: pathlib.Path, records: list[PatchRecord]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """One example per metadata row, in metadata order."""
        for record in records:
            path = common.require(record.path(root), f"patch {record.index} of metadata.csv",
                                  MANUAL_DOWNLOAD_INSTRUCTIONS)
            image = common.read_rgb(path)
            if image.shape != (PATCH_SIZE, PATCH_SIZE, 3):
                raise ValueError(f"{path}: expected a {PATCH_SIZE}x{PATCH_SIZE} RGB patch, got shape {image.shape}.")
            yield record.index, {
                "image": image,
                "label": record.tumor,
                "site": record.center,
                "region": int(record.patient),
                "coords": np.array([record.y, record.x], np.int64),
                "tile_id": record.index,
            }
