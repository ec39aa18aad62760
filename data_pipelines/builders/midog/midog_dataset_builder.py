"""TFDS builder `midog`: MIDOG 2021 mitotic-figure patches, the four scanners as sites.

Reads `MIDOG.json` and the 200 TIFF images (`001.tiff` ... `200.tiff`, ~2 mm^2 regions of human breast cancer
at ~0.25 um/px) from `manual_dir` (or `manual_dir/images/`); nothing is downloaded. Terms of use: those of
the Zenodo record (https://zenodo.org/record/4643381).

Assumed format (MIDOG 2021 release): `MIDOG.json` is COCO-like, with `images` [{id, file_name, width, height}],
`categories` [{id, name}] where "mitotic figure" is the positive class and the other category (hard negative,
a look-alike) is not, and `annotations` [{image_id, category_id, bbox}] with bbox = [x1, y1, x2, y2] in pixels
(50x50 boxes around the cell). Scanner by image id: 1-50 Hamamatsu XR, 51-100 Hamamatsu S360, 101-150 Aperio
ScanScope CS2, 151-200 Leica GT450 (no annotations).

Patches (tile_size^2, centred on the box centre; parts outside the image padded white):
    label 1   every mitotic figure
    label 0   every hard negative, plus `random_per_image` random tissue tiles per annotated image whose
              square holds no mitotic-figure centre (tissue: `tiling.tissue_mask` on a 4x-subsampled image)
    label -1  `unlabelled_per_image` random tissue tiles per Leica GT450 image
Splits: `train` / `test` image-disjoint over the 150 annotated images, `test_fraction` (0.2) of each
scanner's images drawn with `seed` (0) by `common.split_groups`; `unlabelled` = the Leica GT450 images.
`region` = image id; `coords` = patch top-left (y, x) (negative when padded); `tile_id` = 100,000 x image id +
patch index within the image (mitoses, hard negatives, random tiles; each group sorted by position).
"""

import dataclasses
import json
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tifffile

from data_pipelines import tiling
from data_pipelines.builders import common

SCANNERS = ("hamamatsu_xr", "hamamatsu_s360", "aperio_cs2", "leica_gt450")
IMAGES_PER_SCANNER = 50
UNLABELLED_SCANNER = 3
POSITIVE_CATEGORY = "mitotic figure"
_MASK_SUBSAMPLE = 4
_IDS_PER_IMAGE = 100_000

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download the MIDOG 2021 training set (https://zenodo.org/record/4643381: images.zip and MIDOG.json), unzip the
images and pass as manual_dir the folder holding
    MIDOG.json
    001.tiff ... 200.tiff        (or images/001.tiff ...)
"""


@dataclasses.dataclass(frozen=True)
class MidogImage:
    """One image of MIDOG.json with its annotation centres (x, y) in pixels."""

    image_id: int
    path: pathlib.Path
    width: int
    height: int
    mitoses: tuple[tuple[float, float], ...]
    hard_negatives: tuple[tuple[float, float], ...]

    @property
    def scanner(self) -> int:
        return scanner_of(self.image_id)


def scanner_of(image_id: int) -> int:
    """Scanner index (into SCANNERS) of a MIDOG 2021 image id, from the fixed id ranges."""
    if not 1 <= image_id <= IMAGES_PER_SCANNER * len(SCANNERS):
        raise ValueError(f"MIDOG 2021 image ids run from 1 to 200; got {image_id}.")
    return (image_id - 1) // IMAGES_PER_SCANNER


def _resolve(manual_dir: pathlib.Path, file_name: str) -> pathlib.Path:
    candidates = (manual_dir / file_name, manual_dir / "images" / file_name)
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"MIDOG image {file_name} is in MIDOG.json but not at {candidates[0]} or {candidates[1]}.\n"
        f"{MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    )


def read_annotations(manual_dir: pathlib.Path) -> list[MidogImage]:
    """The images of `manual_dir/MIDOG.json` sorted by id, with their annotation centres; raise on a bad layout."""
    json_path = common.require(manual_dir / "MIDOG.json", "the MIDOG 2021 annotations", MANUAL_DOWNLOAD_INSTRUCTIONS)
    data = json.loads(json_path.read_text())
    missing = [key for key in ("images", "categories", "annotations") if key not in data]
    if missing:
        raise ValueError(f"{json_path} lacks {missing}; expected the COCO-style MIDOG.json of MIDOG 2021.")
    names = {int(c["id"]): str(c["name"]).strip().lower() for c in data["categories"]}
    positive = {cid for cid, name in names.items() if name == POSITIVE_CATEGORY}
    if not positive:
        raise ValueError(f"{json_path}: no category named {POSITIVE_CATEGORY!r}; categories are {names}.")
    centres: dict[int, tuple[list, list]] = {int(img["id"]): ([], []) for img in data["images"]}
    for ann in data["annotations"]:
        x1, y1, x2, y2 = (float(v) for v in ann["bbox"])
        if x2 <= x1 or y2 <= y1:
            raise ValueError(f"{json_path}: annotation {ann.get('id')} bbox {ann['bbox']} is not [x1, y1, x2, y2].")
        if int(ann["image_id"]) not in centres:
            raise ValueError(f"{json_path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}.")
        centres[int(ann["image_id"])][int(ann["category_id"]) not in positive].append(((x1 + x2) / 2, (y1 + y2) / 2))
    images = []
    for img in sorted(data["images"], key=lambda img: int(img["id"])):
        image_id = int(img["id"])
        scanner_of(image_id)
        mitoses, negatives = centres[image_id]
        images.append(MidogImage(image_id, _resolve(manual_dir, img["file_name"]), int(img["width"]),
                                 int(img["height"]), tuple(sorted(mitoses, key=lambda c: (c[1], c[0]))),
                                 tuple(sorted(negatives, key=lambda c: (c[1], c[0])))))
    return images


def read_image(image: MidogImage) -> np.ndarray:
    """Level 0 of a MIDOG TIFF as uint8 (H, W, 3); ValueError when its size disagrees with MIDOG.json."""
    with tifffile.TiffFile(image.path) as tif:
        pixels = tif.pages[0].asarray()
    if pixels.ndim != 3 or pixels.shape[-1] < 3 or pixels.dtype != np.uint8:
        raise ValueError(f"{image.path}: expected 8-bit RGB, got shape {pixels.shape} dtype {pixels.dtype}.")
    if pixels.shape[:2] != (image.height, image.width):
        raise ValueError(f"{image.path} is {pixels.shape[1]}x{pixels.shape[0]} but MIDOG.json says "
                         f"{image.width}x{image.height}.")
    return np.ascontiguousarray(pixels[..., :3])


def crop_padded(image: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """image[top:top+size, left:left+size] with the part outside the image filled white (255)."""
    out = np.full((size, size, 3), 255, np.uint8)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + size, image.shape[0]), min(left + size, image.shape[1])
    if y1 > y0 and x1 > x0:
        out[y0 - top : y1 - top, x0 - left : x1 - left] = image[y0:y1, x0:x1]
    return out


def centred_origin(centre: tuple[float, float], size: int) -> tuple[int, int]:
    """Top-left (y, x) of the size x size square centred on an (x, y) point."""
    x, y = centre
    return int(round(y)) - size // 2, int(round(x)) - size // 2


def random_tissue_origins(
    image: np.ndarray, size: int, count: int, avoid: tuple[tuple[float, float], ...], min_tissue: float,
    rng: np.random.Generator,
) -> list[tuple[int, int]]:
    """Up to `count` top-lefts of tissue squares (on a half-tile grid) holding none of the `avoid` (x, y) points."""
    cell = max(size // _MASK_SUBSAMPLE, 1)
    mask = tiling.tissue_mask(np.ascontiguousarray(image[::_MASK_SUBSAMPLE, ::_MASK_SUBSAMPLE]))
    grid = tiling.tile_grid(mask, cell, max(cell // 2, 1), min_tissue)
    origins = [(y * _MASK_SUBSAMPLE, x * _MASK_SUBSAMPLE) for y, x in grid]
    origins = [
        (y, x) for y, x in origins
        if y + size <= image.shape[0] and x + size <= image.shape[1]
        and not any(y <= py < y + size and x <= px < x + size for px, py in avoid)
    ]
    chosen = rng.choice(len(origins), size=min(count, len(origins)), replace=False) if origins else []
    return sorted(origins[i] for i in chosen)


def validate(manual_dir: pathlib.Path) -> None:
    """Raise unless `manual_dir` holds MIDOG.json and every image it lists."""
    read_annotations(manual_dir)


@dataclasses.dataclass(eq=False)
class MidogConfig(tfds.core.BuilderConfig):
    """Patch size, random tiles per image, tissue threshold and the image split."""

    tile_size: int = 128
    random_per_image: int = 20
    unlabelled_per_image: int = 60
    min_tissue_fraction: float = 0.5
    test_fraction: float = 0.2
    seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
    """MIDOG 2021 patches: mitotic figure vs look-alike/tissue, scanner as site, image as region."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Mitosis-centred, hard-negative and random tissue patches; image-disjoint splits."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        MidogConfig(name="tile128", description="128x128 patches (about 32 um)."),
        MidogConfig(name="tile64", description="64x64 patches (about 16 um).", tile_size=64),
    ]
    DEFAULT_CONFIG_NAME = "tile128"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.example_features(
                self.builder_config.tile_size, SCANNERS, None,
                label_doc="1 = mitotic figure, 0 = hard negative or random tissue, -1 = unlabelled (Leica GT450)",
            ),
            supervised_keys=None,
            disable_shuffling=True,
            homepage="https://imig.science/midog2021/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        cfg = self.builder_config
        images = read_annotations(pathlib.Path(dl_manager.manual_dir))
        labelled = [image for image in images if image.scanner != UNLABELLED_SCANNER]
        strata = {str(image.image_id): SCANNERS[image.scanner] for image in labelled}
        test = common.split_groups(strata, cfg.test_fraction, cfg.seed)
        return {
            "train": self._generate_examples([i for i in labelled if str(i.image_id) not in test]),
            "test": self._generate_examples([i for i in labelled if str(i.image_id) in test]),
            "unlabelled": self._generate_examples([i for i in images if i.scanner == UNLABELLED_SCANNER]),
        }

    def _patches(self, image: MidogImage, pixels: np.ndarray) -> list[tuple[tuple[int, int], int]]:
        """(top-left, label) of every patch of one image, in tile_id order."""
        cfg = self.builder_config
        rng = np.random.default_rng([cfg.seed, image.image_id])
        if image.scanner == UNLABELLED_SCANNER:
            origins = random_tissue_origins(pixels, cfg.tile_size, cfg.unlabelled_per_image, (),
                                            cfg.min_tissue_fraction, rng)
            return [(origin, -1) for origin in origins]
        random = random_tissue_origins(pixels, cfg.tile_size, cfg.random_per_image, image.mitoses,
                                       cfg.min_tissue_fraction, rng)
        return ([(centred_origin(c, cfg.tile_size), 1) for c in image.mitoses]
                + [(centred_origin(c, cfg.tile_size), 0) for c in image.hard_negatives]
                + [(origin, 0) for origin in random])

    def _generate_examples(self, images: list[MidogImage]) -> Iterator[tuple[int, dict[str, Any]]]:
        """Patches of each image, images by id."""
        size = self.builder_config.tile_size
        for image in images:
            pixels = read_image(image)
            for index, ((top, left), label) in enumerate(self._patches(image, pixels)):
                tile_id = image.image_id * _IDS_PER_IMAGE + index
                yield tile_id, {
                    "image": crop_padded(pixels, top, left, size),
                    "label": label,
                    "site": image.scanner,
                    "region": image.image_id,
                    "coords": np.array([top, left], np.int64),
                    "tile_id": tile_id,
                }
