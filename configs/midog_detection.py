"""Mitotic-figure detection across scanners on MIDOG 2021: LMC vs no normalisation vs Macenko.

Trains LMC (and the geometric_only reference: the same Barlow Twins without stain views) on the MIDOG builder's
training tiles of all three annotated scanners (self-supervised, no labels; the test-split images are never seen),
then per row a detection head on the frozen encoder's patch tokens: LayerNorm → 3×3 conv → 1×1 conv, upsampled to
one heat-map cell per 4 px, trained with a focal loss against Gaussian targets (σ = 2 µm) at the annotated centres
of the SOURCE scanner's training images only. Peaks: local maxima above the threshold, greedy NMS at 7.5 µm; the
threshold maximises F1 on held-out source images. Scored on every scanner's test images with MIDOG's matching
(evalutils' score_detection order, 7.5 µm converted to pixels per scanner). Rows: geometric_only on unnormalised
images, Macenko in front of geometric_only, LMC on unnormalised images. --config.detection.finetune_encoder=True
trains the encoder with the head.

Data layout (config.data.manual_dir; nothing is downloaded): MIDOG.json + 001.tiff ... 200.tiff (or images/NNN.tiff)
from https://zenodo.org/record/4643381. The tile data set is built from it on first use (midog/tile128).

    python -m lmc_jax.main --config configs/midog_detection.py --workdir runs/midog_detection \\
        --config.data.manual_dir=/data/midog2021
    # a trained run instead of training here: --config.detection.checkpoint=runs/midog_lmc

Writes WORKDIR/detection/results.json and results.md (rows × scanners F1, unseen mean, threshold).
Runtime, estimated from compiled FLOPs (not measured; BENCHMARKS.md "Expected runtimes of the real-archive
configs"): 3.5e16 FLOPs, at 16-40% MFU 3.7-1.5 min on one H200 and 3.3-1.3 min on a TPU v4-8 (accelerator time
only). On the tiny MIDOG replica (tests/test_experiment_configs.py: 2 images per scanner, ViT-mu/8, 2 LMC steps) the
run takes about one CPU-minute (60 s user time; 2.5 min wall on a 2-core machine shared with other jobs).
Result on MIDOG: not yet known. On the replica (painted nuclei, 20 LMC steps, 200 head steps; not evidence about real
data) F1 source / S360 / CS2: geometric_only 0.667 / 1.000 / 0.667, macenko+geometric_only 0.667 / 1.000 / 0.667,
lmc 1.000 / 1.000 / 1.000.
"""

import os
import runpy

import ml_collections

_DEFAULT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))


def get_config() -> ml_collections.ConfigDict:
    config = _DEFAULT["get_config"]()
    config.mode = "detection"
    config.data.name = "midog"
    config.data.tile_size = 128  # midog/tile128: 128-px tiles (~32 µm) for LMC pre-training
    config.data.crop_size = 112  # views and detection windows: 7 × 7 patches of 16 px
    config.model.variant = "S/16"
    config.batch_size = 256
    config.num_steps = 5_000
    config.optimizer.warmup_steps = 500
    config.eval.at_end = False
    config.eval.batch_size = 128

    # Detection (lmc_jax/detection): rows are "[normaliser+]encoder"
    config.detection = ml_collections.ConfigDict()
    config.detection.checkpoint = ""  # a trained run's workdir; "" = train LMC and the rows' encoders in --workdir
    config.detection.rows = ("geometric_only", "macenko+geometric_only", "lmc")
    config.detection.source_scanner = "hamamatsu_xr"  # the head trains on this scanner's images only
    config.detection.test_fraction = 0.2  # image split as the midog builder draws it (keep equal to its config)
    config.detection.split_seed = 0
    config.detection.val_fraction = 0.25  # of the source's training images: picks the threshold
    config.detection.microns_per_pixel = 0.0  # 0 = per scanner (XR/S360 0.23, CS2 0.25, GT450 0.26)
    config.detection.radius_microns = 7.5  # MIDOG's matching radius
    config.detection.min_distance_microns = 7.5  # peaks closer than this are suppressed (greedy by score)
    config.detection.sigma_microns = 2.0  # Gaussian target width
    config.detection.heatmap_stride = 4  # px per heat-map cell; divides the patch size
    config.detection.hidden = 256  # width of the head's 3×3 conv
    config.detection.finetune_encoder = False  # True: the encoder trains with the head
    config.detection.loss = "focal"  # focal (soft-target focal loss) | weighted_bce
    config.detection.focal_gamma = 2.0
    config.detection.pos_weight = 50.0  # weighted_bce only
    config.detection.num_steps = 3_000
    config.detection.batch_size = 64
    config.detection.learning_rate = 1e-3
    config.detection.weight_decay = 1e-4
    config.detection.positive_fraction = 0.5  # of each batch, windows holding a mitotic figure
    config.detection.negatives_per_image = 200  # random windows without one, per training image
    config.detection.jitter_per_truth = 4  # extra windows per figure, placed at random around it
    config.detection.candidate_floor = 0.05  # peaks below this are never candidates for the threshold
    config.detection.max_thresholds = 200  # thresholds tried on the validation images
    config.detection.normalizer_fit_tiles = 256  # source tissue windows a normaliser is fitted to
    return config
