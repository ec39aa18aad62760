"""MIDOG 2021 images for detection: whole images with their mitotic-figure centres (MIDOG.json order), the image
split, microns per pixel by scanner, and windows cut for the encoder. I/O and bookkeeping only.

The images come from the MIDOG builder's `manual_dir` (MIDOG.json + NNN.tiff), read with the builder's own readers.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from data_pipelines.builders import common
from data_pipelines.builders.midog import midog_dataset_builder as midog

SCANNERS = midog.SCANNERS
# Scan resolution of the four MIDOG 2021 scanners (µm/px): Hamamatsu XR and S360 0.23, Aperio ScanScope CS2 0.25
# (the data set's description, Aubreville et al., Medical Image Analysis 84, 2023; checked against an independent
# public note on the download, github.com/CS-433/ml-project-2-ml-ts-4science README: "001-100 0.23 mpp, 101-200
# 0.25 mpp"). Leica GT450 0.26 is Leica's 40x specification; its 50 MIDOG 2021 images carry no annotations, so it
# enters no F1. The challenge's evaluation (DeepMicroscopy/MIDOG_evaluation_docker, evaluation.py) matches in
# world coordinates, radius 7.5e-3 mm, so the radius in pixels depends on the scanner;
# config.detection.microns_per_pixel overrides this table with one value.
MICRONS_PER_PIXEL = {"hamamatsu_xr": 0.23, "hamamatsu_s360": 0.23, "aperio_cs2": 0.25, "leica_gt450": 0.26}


@dataclasses.dataclass(frozen=True)
class Image:
    """One MIDOG image: pixels, scanner and mitotic-figure centres (y, x) in pixels, in MIDOG.json order."""

    image_id: int
    scanner: str
    pixels: np.ndarray  # uint8 [H, W, 3]
    truths: np.ndarray  # float64 [K, 2] (y, x)
    microns_per_pixel: float


def mitoses_in_file_order(manual_dir: pathlib.Path) -> dict[int, np.ndarray]:
    """image id → the (y, x) centres of its mitotic figures in the order MIDOG.json lists them (the annotation
    order MIDOG's matching walks; the builder sorts them by position instead)."""
    data = json.loads((manual_dir / "MIDOG.json").read_text())
    positive = {int(c["id"]) for c in data["categories"]
                if str(c["name"]).strip().lower() == midog.POSITIVE_CATEGORY}
    out: dict[int, list] = {int(img["id"]): [] for img in data["images"]}
    for ann in data["annotations"]:
        if int(ann["category_id"]) in positive:
            x1, y1, x2, y2 = (float(v) for v in ann["bbox"])
            out[int(ann["image_id"])].append(((y1 + y2) / 2, (x1 + x2) / 2))
    return {k: np.asarray(v, np.float64).reshape(-1, 2) for k, v in out.items()}


def load_images(manual_dir: str | pathlib.Path, microns_per_pixel: float = 0.0) -> list[Image]:
    """Every annotated MIDOG image (the Leica GT450 ones have no labels and are left out), by id.

    `microns_per_pixel` > 0 replaces the per-scanner table (MICRONS_PER_PIXEL)."""
    manual_dir = pathlib.Path(manual_dir)
    order = mitoses_in_file_order(manual_dir)
    images = []
    for info in midog.read_annotations(manual_dir):
        if info.scanner == midog.UNLABELLED_SCANNER:
            continue
        scanner = SCANNERS[info.scanner]
        images.append(Image(info.image_id, scanner, midog.read_image(info), order[info.image_id],
                            microns_per_pixel or MICRONS_PER_PIXEL[scanner]))
    return images


def test_ids(images: list[Image], test_fraction: float, seed: int) -> frozenset[int]:
    """The images of the test split, drawn per scanner as the MIDOG builder draws them (`common.split_groups` on
    image ids stratified by scanner): with the builder's test_fraction and seed, the images whose tiles LMC never
    trained on."""
    return frozenset(int(i) for i in common.split_groups({str(im.image_id): im.scanner for im in images},
                                                         test_fraction, seed))


def validation_ids(images: list[Image], fraction: float, seed: int) -> frozenset[int]:
    """A share of `images` (one scanner's training images) held out to pick the detection threshold; empty when
    there are fewer than 2 images."""
    if len(images) < 2:
        return frozenset()
    return frozenset(int(i) for i in common.split_groups({str(im.image_id): "all" for im in images}, fraction, seed))


def pad_to_windows(pixels: np.ndarray, size: int) -> np.ndarray:
    """The image padded white (255) at the bottom and right to a multiple of `size` on both axes."""
    h, w = pixels.shape[:2]
    out = np.full((-(-h // size) * size, -(-w // size) * size, 3), 255, np.uint8)
    out[:h, :w] = pixels
    return out


def grid_windows(pixels: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows uint8 [N, size, size, 3], top-lefts int [N, 2] (y, x)): the padded image cut into a grid, row-major."""
    padded = pad_to_windows(pixels, size)
    rows, cols = padded.shape[0] // size, padded.shape[1] // size
    windows = padded.reshape(rows, size, cols, size, 3).swapaxes(1, 2).reshape(-1, size, size, 3)
    origins = np.stack(np.meshgrid(np.arange(rows) * size, np.arange(cols) * size, indexing="ij"), -1).reshape(-1, 2)
    return windows, origins


def crop(pixels: np.ndarray, top: int, left: int, size: int) -> np.ndarray:
    """pixels[top:top+size, left:left+size], the part outside the image white (the builder's crop)."""
    return midog.crop_padded(pixels, top, left, size)


def centres_in(truths: np.ndarray, origin: np.ndarray, size: int, margin: float = 0.0) -> np.ndarray:
    """The truths within `margin` pixels of the window at `origin` (y, x) or inside it, in the window's coordinates,
    [k, 2] (a truth just outside still lights the window's border cells of its Gaussian target)."""
    local = np.asarray(truths, np.float64).reshape(-1, 2) - np.asarray(origin, np.float64)
    return local[np.all((local >= -margin) & (local < size + margin), axis=1)]
