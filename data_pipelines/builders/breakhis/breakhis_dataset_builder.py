"""TFDS builder `breakhis`: BreaKHis breast-tumour images, benign vs malignant, the four magnifications as sites.

Reads the unpacked `BreaKHis_v1/` folder from `manual_dir` (9,109 RGB PNGs of 700x460 px from 82 patients);
nothing is downloaded. Terms of use: those of the BreaKHis page (P&D Laboratory, UFPR).

Configs:
    tile224    non-overlapping 224x224 tiles at native resolution on a centred grid (3 x 2 per 700x460 image)
    tile96     the same with 96x96 tiles (7 x 4 per image)
    resize224  the whole image resized (shorter side to 224, Pillow bicubic) and centre-cropped: one per image
Splits: `train` / `test`, patient-disjoint, 70 / 30 of the patients of each class, drawn with seed 0 by
`common.split_groups` (sorted patient ids, one seeded permutation per class).
Example fields: `label` 0 benign / 1 malignant; `site` = magnification (40X, 100X, 200X, 400X); `region` =
patient (index of the sorted patient ids `<year>-<slide>` from the file names, so a patient whose slides sit
in two tumour-type folders stays one group); `coords` = tile top-left (y, x) in the original image;
`tile_id` = 10,000 x (rank of the image's path among all sorted paths) + tile index (row-major).
"""

import dataclasses
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import common

MAGNIFICATIONS = ("40X", "100X", "200X", "400X")
CLASSES = ("benign", "malignant")
_FILE = re.compile(
    r"^(?P<procedure>[A-Z]+)_(?P<cls>[BM])_(?P<type>[A-Z]+)-(?P<year>\d+)-(?P<slide>[0-9A-Za-z]+)-"
    r"(?P<mag>40|100|200|400)-(?P<seq>\d+)\.png$"
)
_RELATIVE = pathlib.Path("BreaKHis_v1") / "histology_slides" / "breast"

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download BreaKHis_v1.tar.gz from
https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/ (or a mirror),
unpack it and pass as manual_dir the folder that holds `BreaKHis_v1/` (or `BreaKHis_v1/` itself):
    BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<tumour type>/<patient, e.g. SOB_B_A_14-22549AB>/
        <40X|100X|200X|400X>/<procedure>_<B|M>_<type>-<year>-<slide>-<magnification>-<seq>.png
"""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """One BreaKHis image and what its path says about it."""

    path: pathlib.Path
    label: int
    magnification: str
    patient: str


def locate_breast_dir(manual_dir: pathlib.Path) -> pathlib.Path:
    """`.../BreaKHis_v1/histology_slides/breast` under `manual_dir` (or `manual_dir` = BreaKHis_v1 itself)."""
    candidates = (manual_dir / _RELATIVE, manual_dir / _RELATIVE.relative_to("BreaKHis_v1"))
    for path in candidates:
        if all((path / name / "SOB").is_dir() for name in CLASSES):
            return path
    raise FileNotFoundError(
        f"No BreaKHis folders benign/SOB and malignant/SOB under {candidates[0]} (or {candidates[1]}).\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    )


def parse_path(path: pathlib.Path, breast_dir: pathlib.Path) -> ImageRecord:
    """The record of one PNG; ValueError naming the file when its name or folders break the BreaKHis pattern."""
    parts = path.relative_to(breast_dir).parts  # class, SOB, type, patient folder, magnification, file
    match = _FILE.match(path.name)
    if len(parts) != 6 or match is None:
        raise ValueError(
            f"{path} does not follow <class>/SOB/<type>/<patient>/<mag>X/<proc>_<B|M>_<type>-<year>-<slide>-<mag>-"
            f"<seq>.png under {breast_dir}."
        )
    label = CLASSES.index(parts[0])
    if match["cls"] != "BM"[label] or parts[4] != f"{match['mag']}X":
        raise ValueError(f"{path}: file name says class {match['cls']}, {match['mag']}X but its folders say "
                         f"{parts[0]}, {parts[4]}.")
    return ImageRecord(path, label, parts[4], f"{match['year']}-{match['slide']}")


def scan(breast_dir: pathlib.Path) -> list[ImageRecord]:
    """Every BreaKHis PNG under `breast_dir`, sorted by path; ValueError when there are none."""
    paths = sorted(p for name in CLASSES for p in (breast_dir / name / "SOB").glob("*/*/*/*.png"))
    if not paths:
        raise ValueError(f"No PNGs under {breast_dir}/{{benign,malignant}}/SOB/<type>/<patient>/<mag>X/.")
    return [parse_path(path, breast_dir) for path in paths]


def validate(manual_dir: pathlib.Path) -> None:
    """Raise unless `manual_dir` holds the BreaKHis layout with at least one image."""
    scan(locate_breast_dir(manual_dir))


@dataclasses.dataclass(eq=False)
class BreakhisConfig(tfds.core.BuilderConfig):
    """`mode` "tile" (native-resolution grid) or "resize" (whole image fitted); patient split parameters."""

    tile_size: int = 224
    mode: str = "tile"
    test_fraction: float = 0.3
    seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
    """BreaKHis tiles: benign/malignant label, magnification as site, patient as region."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Patient-disjoint 70/30 split; native tiles (tile224, tile96) or fitted (resize224)."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        BreakhisConfig(name="tile224", description="224x224 native-resolution tiles, centred grid."),
        BreakhisConfig(name="tile96", description="96x96 native-resolution tiles, centred grid.", tile_size=96),
        BreakhisConfig(name="resize224", description="Whole image, shorter side to 224, centre crop.", mode="resize"),
    ]
    DEFAULT_CONFIG_NAME = "tile224"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.example_features(self.builder_config.tile_size, MAGNIFICATIONS, CLASSES),
            supervised_keys=None,
            disable_shuffling=True,
            homepage="https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        cfg = self.builder_config
        if cfg.mode not in ("tile", "resize"):
            raise ValueError(f"BreakhisConfig {cfg.name!r}: mode must be 'tile' or 'resize', got {cfg.mode!r}.")
        records = scan(locate_breast_dir(pathlib.Path(dl_manager.manual_dir)))
        labels = {r.patient: CLASSES[r.label] for r in records}
        mixed = sorted({r.patient for r in records if CLASSES[r.label] != labels[r.patient]})
        if mixed:
            raise ValueError(f"BreaKHis patients {mixed} have both benign and malignant images; check the folders.")
        test = common.split_groups(labels, cfg.test_fraction, cfg.seed)
        region = {patient: index for index, patient in enumerate(sorted(labels))}
        ranked = list(enumerate(records))
        return {
            "train": self._generate_examples([(i, r) for i, r in ranked if r.patient not in test], region),
            "test": self._generate_examples([(i, r) for i, r in ranked if r.patient in test], region),
        }

    def _generate_examples(
        self, records: list[tuple[int, ImageRecord]], region: dict[str, int]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Tiles of each (path rank, image) in path order, row-major within an image."""
        cfg = self.builder_config
        for rank, record in records:
            image = common.read_rgb(record.path)
            if cfg.mode == "resize":
                tiles = [common.fit_square(image, cfg.tile_size)]
            else:
                origins = common.grid_origins(image.shape[0], image.shape[1], cfg.tile_size)
                tiles = [(image[y : y + cfg.tile_size, x : x + cfg.tile_size], (y, x)) for y, x in origins]
            for tile_index, (tile, origin) in enumerate(tiles):
                tile_id = rank * 10_000 + tile_index
                yield tile_id, {
                    "image": np.ascontiguousarray(tile),
                    "label": record.label,
                    "site": MAGNIFICATIONS.index(record.magnification),
                    "region": region[record.patient],
                    "coords": np.asarray(origin, np.int64),
                    "tile_id": tile_id,
                }
