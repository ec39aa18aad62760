"""Stain-normalize a folder of H&E tiles (PNG/JPEG/TIFF) to a reference: Macenko, Reinhard or Vahadane.

Fits the method to the reference image (or loads params saved by an earlier run as JSON), then
normalizes every tile in batches of same-size images through one jitted function, writing each
under the same file name to the output folder (the input folder is only read). Tiles without
tissue or with a degenerate stain estimate are copied through unchanged and listed, with corrupt or
non-image files, in `<output>/normalize_log.json`. On a 2-core CPU: 1-3 s to compile per tile size,
then ~400-1000 tiles of 224 px per second in the transform (see BENCHMARKS.md); decoding and PNG
encoding of the files usually take longer than that.

    python -m lmc_jax.main --config configs/normalize.py --config.method=macenko \
        --config.reference=ref.png --config.input=DIR --config.output=DIR
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "normalize"
    config.method = "macenko"  # macenko | reinhard | vahadane
    config.reference = ""  # reference tile (PNG/JPEG/TIFF), or a params JSON written by a previous run
    config.input = ""  # folder of tiles to normalize; never modified
    config.output = ""  # folder for the normalized tiles (same names); must not overlap config.input
    config.recursive = False  # also normalize tiles in sub-folders, mirroring them under config.output
    config.overwrite = False  # replace files that already exist in config.output
    config.batch_size = 64  # same-size tiles per jitted call (a short last batch is padded, not recompiled)
    config.jpeg_quality = 95  # quality of re-encoded .jpg/.jpeg outputs (PNG and TIFF are lossless)
    config.log = ""  # JSON log path; empty = <output>/normalize_log.json
    config.progress = True  # progress bar on stderr when it is a terminal

    # Method hyper-parameters (the fields of MacenkoConfig / ReinhardConfig / VahadaneConfig)
    config.macenko = ml_collections.ConfigDict()
    config.macenko.io = 240.0  # background (transmitted light) intensity, 0-255
    config.macenko.alpha = 1.0  # percent: H and E are the alpha / 100-alpha percentile angles
    config.macenko.beta = 0.15  # OD threshold below which a pixel is transparent
    config.macenko.max_percentile = 99.0  # concentration percentile used as each stain's maximum
    config.macenko.min_tissue_fraction = 0.01  # fewer stained pixels → tile passed through, flagged no_tissue
    config.macenko.min_stain_angle = 0.02  # radians; H and E closer than this → flagged degenerate

    config.reinhard = ml_collections.ConfigDict()
    config.reinhard.io = 240.0  # background intensity of the tissue check's optical density
    config.reinhard.beta = 0.15  # tissue pixels have OD ≥ beta in every channel
    config.reinhard.min_tissue_fraction = 0.01  # fewer tissue pixels → flagged no_tissue
    config.reinhard.min_std = 0.05  # a Lab channel with a smaller std is flat → flagged degenerate

    config.vahadane = ml_collections.ConfigDict()
    config.vahadane.io = 255.0  # background intensity, 0-255 (StainTools' convention)
    config.vahadane.beta = 0.15  # tissue pixels have OD ≥ beta in every channel
    config.vahadane.regularizer = 0.1  # sparsity λ of the stain dictionary learning
    config.vahadane.concentration_regularizer = 0.01  # sparsity λ of the per-pixel concentrations
    config.vahadane.iterations = 30  # dictionary-learning alternations
    config.vahadane.num_samples = 8192  # tissue pixels sampled per tile for the dictionary
    config.vahadane.seed = 0  # seed of that sample (same seed → same output)
    config.vahadane.max_percentile = 99.0
    config.vahadane.min_tissue_fraction = 0.01
    config.vahadane.min_stain_angle = 0.02
    return config
