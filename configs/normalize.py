"""Stain-normalize a folder of H&E tiles (PNG/JPEG/TIFF) to a reference: Macenko, Reinhard or Vahadane.

Fits the method to the reference image (or loads params saved by an earlier run as JSON), then
normalizes every tile in batches of same-size images through one jitted function (each batch at
most config.max_batch_pixels pixels, so a large image goes alone), writing each
under the same file name to the output folder (the input folder is only read). Tiles without
tissue or with a degenerate stain estimate are copied through unchanged and listed, with corrupt or
non-image files, in `<output>/normalize_log.json`. On a 2-core CPU: 1-3 s to compile per tile size,
then ~400-1000 tiles of 224 px per second in the transform (see BENCHMARKS.md); decoding and PNG
encoding of the files usually take longer than that.

    python -m lmc_jax.main --config configs/normalize.py --config.method=macenko \
        --config.reference=ref.png --config.input=DIR --config.output=DIR
"""

import dataclasses

import ml_collections

from lmc_jax.stain import normalizers


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "normalize"
    config.method = "macenko"  # macenko | reinhard | vahadane (lmc_jax.stain.normalizers.NAMES)
    config.reference = ""  # reference tile (PNG/JPEG/TIFF), or a params JSON written by a previous run
    config.input = ""  # folder of tiles to normalize; never modified
    config.output = ""  # folder for the normalized tiles (same names); must not overlap config.input
    config.recursive = False  # also normalize tiles in sub-folders, mirroring them under config.output
    config.overwrite = False  # replace files that already exist in config.output
    config.batch_size = 64  # most same-size tiles per jitted call; a short group is padded to the next power of 2
    config.max_batch_pixels = 64 * 256 * 256  # pixels per jitted call (bounds memory): bigger tiles go fewer, or alone
    config.jpeg_quality = 95  # quality of re-encoded .jpg/.jpeg outputs (PNG and TIFF are lossless)
    config.log = ""  # JSON log path; empty = <output>/normalize_log.json
    config.progress = True  # progress bar on stderr when it is a terminal

    # Method hyper-parameters: config.<method> holds every field of that method's config dataclass
    # (MacenkoConfig / ReinhardConfig / VahadaneConfig in lmc_jax/stain/<method>.py, where each
    # default is written and commented once), e.g. --config.macenko.alpha=1.5
    for name, normalizer in normalizers.NORMALIZERS.items():
        config[name] = ml_collections.ConfigDict(dataclasses.asdict(normalizer.config_class()))
    return config
