"""TFDS builder `camelyon16`: tissue patches sampled from the Camelyon16 training WSIs, two hospitals as sites.

Reads from `manual_dir` (the CAMELYON16 folder, or its `training/`): `training/normal/normal_NNN.tif`,
`training/tumor/tumor_NNN.tif` and the lesion annotations `training/lesion_annotations/tumor_NNN.xml` (or the
unopened `training/lesion_annotations.zip`). Slides are read with tifffile (no OpenSlide). Licence: CC0.

Per slide: tissue mask (`tiling.tissue_mask`) on the coarsest pyramid level at most `mask_downsample` times
smaller than level 0; a non-overlapping grid of patches at pyramid level `level`; patches whose square is at
least `min_tissue_fraction` tissue are candidates; label 1 when the patch centre lies in an annotated metastasis
(groups _0/_1/Tumor) and in no exclusion (_2), else 0; then up to `tumour_per_slide` tumour and
`normal_per_slide` normal candidates drawn with `np.random.default_rng([seed, region])`, kept in row-major order.
Tumour slides without an annotation file are skipped (listed under "skipped" in metadata.json): their
unlabelled metastases would otherwise read as normal.

Site = hospital, from the file number (Camelyon16 training set, Bejnordi et al. 2017 and the data note):
`radboud_umc` for normal_001-100 and tumor_001-070, `umc_utrecht` for normal_101-160 and tumor_071 onwards.
The official test slides (test_NNN.tif) carry no centre in their names and are not read.
Splits: `train` / `test`, slide-disjoint: `test_fraction` (0.2) of the slides of each (site, normal/tumour)
stratum, drawn with `seed` (0) by `common.split_groups`.
`region` = slide: NNN for normal_NNN, 1000 + NNN for tumor_NNN; `coords` = patch top-left (y, x) in level-0
pixels; `tile_id` = 1,000,000 x region + patch index within the slide.
"""

import dataclasses
import pathlib
import re
import zipfile
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tifffile
from absl import logging

from data_pipelines import tiling
from data_pipelines.builders import common
from data_pipelines.builders.camelyon16 import asap, wsi

SITES = ("radboud_umc", "umc_utrecht")
_LAST_RADBOUD = {"normal": 100, "tumor": 70}
_SLIDE = re.compile(r"^(normal|tumor)_(\d{3})\.tif$")
_IDS_PER_SLIDE = 1_000_000

MANUAL_DOWNLOAD_INSTRUCTIONS = """
Download CAMELYON16 (https://camelyon17.grand-challenge.org/Data/, GigaScience or the AWS open-data bucket
s3://camelyon-dataset/CAMELYON16/) and pass as manual_dir the CAMELYON16 folder (or its training/ folder):
    training/normal/normal_001.tif ...
    training/tumor/tumor_001.tif ...
    training/lesion_annotations/tumor_001.xml ...   (or training/lesion_annotations.zip as downloaded)
"""


@dataclasses.dataclass(frozen=True)
class Slide:
    """One training slide and what its name says."""

    path: pathlib.Path
    kind: str  # "normal" | "tumor"
    number: int

    @property
    def site(self) -> int:
        return int(self.number > _LAST_RADBOUD[self.kind])

    @property
    def region(self) -> int:
        return self.number + (1000 if self.kind == "tumor" else 0)


def locate_training(manual_dir: pathlib.Path) -> pathlib.Path:
    """The folder holding normal/ and/or tumor/: `manual_dir/training` or `manual_dir` itself."""
    for root in (manual_dir / "training", manual_dir):
        if (root / "normal").is_dir() or (root / "tumor").is_dir():
            return root
    raise FileNotFoundError(
        f"No Camelyon16 slides: expected {manual_dir / 'training' / 'normal'} and/or "
        f"{manual_dir / 'training' / 'tumor'}.\n{MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
    )


def list_slides(training: pathlib.Path) -> list[Slide]:
    """normal_NNN.tif and tumor_NNN.tif under `training`, sorted; ValueError when there are none."""
    slides = []
    for kind in ("normal", "tumor"):
        for path in sorted((training / kind).glob("*.tif")):
            match = _SLIDE.match(path.name)
            if match is None or match[1] != kind:
                raise ValueError(f"{path}: expected {kind}/{kind}_NNN.tif (three-digit number).")
            slides.append(Slide(path, kind, int(match[2])))
    if not slides:
        raise ValueError(f"No normal_NNN.tif or tumor_NNN.tif under {training}/normal or {training}/tumor.")
    return slides


def read_annotations(training: pathlib.Path) -> dict[str, asap.Annotations]:
    """Slide stem -> annotations, from lesion_annotations/*.xml, else from lesion_annotations.zip; {} if neither."""
    folder, archive = training / "lesion_annotations", training / "lesion_annotations.zip"
    if folder.is_dir():
        return {path.stem: asap.read(path) for path in sorted(folder.glob("*.xml"))}
    if archive.is_file():
        with zipfile.ZipFile(archive) as zipped:
            return {
                pathlib.PurePath(name).stem: asap.parse(zipped.read(name).decode(), f"{archive}:{name}")
                for name in sorted(zipped.namelist()) if name.endswith(".xml")
            }
    return {}


def validate(manual_dir: pathlib.Path) -> None:
    """Raise unless `manual_dir` holds Camelyon16 training slides named as released."""
    list_slides(locate_training(manual_dir))


def patch_candidates(
    mask: np.ndarray, mask_scale: float, level0_shape: tuple[int, int], extent: int, min_tissue: float
) -> np.ndarray:
    """Level-0 top-lefts (y, x) (K, 2) of the non-overlapping extent x extent grid with enough tissue.

    The tissue fraction of a square is read off `mask` (mask pixel = `mask_scale` level-0 pixels).
    """
    ys = np.arange(0, level0_shape[0] - extent + 1, extent)
    xs = np.arange(0, level0_shape[1] - extent + 1, extent)
    y0, x0 = (grid.ravel() for grid in np.meshgrid(ys, xs, indexing="ij"))
    integral = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    my0 = np.minimum((y0 / mask_scale).astype(np.int64), mask.shape[0] - 1)
    mx0 = np.minimum((x0 / mask_scale).astype(np.int64), mask.shape[1] - 1)
    my1 = np.clip(np.ceil((y0 + extent) / mask_scale).astype(np.int64), my0 + 1, mask.shape[0])
    mx1 = np.clip(np.ceil((x0 + extent) / mask_scale).astype(np.int64), mx0 + 1, mask.shape[1])
    tissue = integral[my1, mx1] - integral[my0, mx1] - integral[my1, mx0] + integral[my0, mx0]
    keep = tissue >= min_tissue * (my1 - my0) * (mx1 - mx0)
    return np.stack([y0[keep], x0[keep]], 1).astype(np.int64)


@dataclasses.dataclass(eq=False)
class Camelyon16Config(tfds.core.BuilderConfig):
    """Patch size, pyramid level, sampling per slide, mask resolution and the slide split."""

    tile_size: int = 96
    level: int = 0
    tumour_per_slide: int = 200
    normal_per_slide: int = 200
    min_tissue_fraction: float = 0.5
    mask_downsample: int = 32
    test_fraction: float = 0.2
    seed: int = 0


class Builder(tfds.core.GeneratorBasedBuilder):
    """Camelyon16 training-slide patches: tumour label, hospital as site, slide as region."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Tissue patches from the training WSIs; slide-disjoint 80/20 split."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [
        Camelyon16Config(name="tile96", description="96x96 patches at level 0 (~0.24 um/px)."),
        Camelyon16Config(name="tile224", description="224x224 patches at level 0 (~0.24 um/px).", tile_size=224),
    ]
    DEFAULT_CONFIG_NAME = "tile96"

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=common.example_features(self.builder_config.tile_size, SITES, ["normal", "tumor"]),
            supervised_keys=None,
            disable_shuffling=True,
            homepage="https://camelyon16.grand-challenge.org/",
            license="CC0 1.0",
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        cfg = self.builder_config
        if cfg.tumour_per_slide + cfg.normal_per_slide >= _IDS_PER_SLIDE:
            raise ValueError(f"Camelyon16Config {cfg.name!r}: at most {_IDS_PER_SLIDE - 1} patches per slide.")
        training = locate_training(pathlib.Path(dl_manager.manual_dir))
        annotations = read_annotations(training)
        slides = []
        self.info.metadata["skipped"] = []
        for slide in list_slides(training):
            if slide.kind == "tumor" and slide.path.stem not in annotations:
                reason = f"tumour slide without lesion annotation {slide.path.stem}.xml"
                self.info.metadata["skipped"].append(common.log_skip(slide.path, reason, training))
            else:
                slides.append(slide)
        strata = {slide.path.stem: f"{SITES[slide.site]}/{slide.kind}" for slide in slides}
        test = common.split_groups(strata, cfg.test_fraction, cfg.seed)
        return {
            "train": self._generate_examples([s for s in slides if s.path.stem not in test], annotations),
            "test": self._generate_examples([s for s in slides if s.path.stem in test], annotations),
        }

    def _sample(
        self, slide: Slide, levels: list[tifffile.TiffPage], annotations: asap.Annotations
    ) -> list[tuple[tuple[int, int], int]]:
        """(level-0 top-left (y, x), label) of the patches drawn from one slide, row-major."""
        cfg = self.builder_config
        base = levels[0]
        mask_page = [page for page in levels if wsi.downsample(base, page) <= cfg.mask_downsample][-1]
        mask = tiling.tissue_mask(wsi.read_region(mask_page, 0, 0, mask_page.imagelength, mask_page.imagewidth))
        extent = round(cfg.tile_size * wsi.downsample(base, levels[cfg.level]))
        origins = patch_candidates(mask, wsi.downsample(base, mask_page), (base.imagelength, base.imagewidth),
                                   extent, cfg.min_tissue_fraction)
        labels = asap.is_tumour(origins[:, ::-1] + extent / 2, annotations)
        rng = np.random.default_rng([cfg.seed, slide.region])
        chosen = []
        for label, quota in ((True, cfg.tumour_per_slide), (False, cfg.normal_per_slide)):
            pool = np.flatnonzero(labels == label)
            chosen.extend(rng.choice(pool, size=min(quota, len(pool)), replace=False).tolist())
        logging.info("%s: %d tissue patches, %d tumour; keeping %d.", slide.path.name, len(origins),
                     int(labels.sum()), len(chosen))
        return [(tuple(origins[i]), int(labels[i])) for i in sorted(chosen)]

    def _generate_examples(
        self, slides: list[Slide], annotations: dict[str, asap.Annotations]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """Patches of each slide, slides in name order."""
        cfg = self.builder_config
        for slide in slides:
            with tifffile.TiffFile(slide.path) as tif:
                levels = wsi.pyramid(tif)
                if cfg.level >= len(levels):
                    raise ValueError(f"{slide.path} has {len(levels)} pyramid levels; config level is {cfg.level}.")
                page, scale = levels[cfg.level], wsi.downsample(levels[0], levels[cfg.level])
                patches = self._sample(slide, levels, annotations.get(slide.path.stem, asap.Annotations()))
                for index, ((y, x), label) in enumerate(patches):
                    tile_id = slide.region * _IDS_PER_SLIDE + index
                    top = min(round(y / scale), page.imagelength - cfg.tile_size)
                    left = min(round(x / scale), page.imagewidth - cfg.tile_size)
                    yield tile_id, {
                        "image": wsi.read_region(page, top, left, cfg.tile_size, cfg.tile_size),
                        "label": label,
                        "site": slide.site,
                        "region": slide.region,
                        "coords": np.array([y, x], np.int64),
                        "tile_id": tile_id,
                    }
