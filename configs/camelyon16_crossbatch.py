"""Camelyon16 across hospitals: Radboud UMC as the source batch, UMC Utrecht as the unseen one.

LMC and the geometric_only reference (the same Barlow Twins without stain views) pre-train on the SOURCE
hospital's slides of the camelyon16 `train` split only (data.train_sites); the tumour-vs-normal probe is fitted on the SOURCE hospital's training patches only
(eval.source_only), and every metric of the suite is reported per hospital on the slide-disjoint `test` split: the
cross-batch number is the probe's AUC at umc_utrecht. Rows: lmc, geometric_only (no normalisation), Macenko,
Reinhard and Vahadane each fitted to Radboud patches in front of geometric_only and in front of LMC.

Nothing of UMC Utrecht is seen before evaluation: not by the encoders, the probe or the normalisers.

Data layout (config.data.manual_dir; nothing is downloaded): CAMELYON16/training/{normal,tumor}/*.tif and
training/lesion_annotations/*.xml (or lesion_annotations.zip); the tile96 data set is built from it on first use.

    python -m lmc_jax.main --config configs/camelyon16_crossbatch.py --workdir runs/c16_crossbatch \\
        --config.data.manual_dir=/data/CAMELYON16

Writes the usual workdir (checkpoints, references/geometric_only, eval/metrics.json, report.md).
Runtime, estimated from compiled FLOPs (not measured; BENCHMARKS.md "Expected runtimes of the real-archive
configs"): 5.1e16 FLOPs, at 16-40% MFU 5.4-2.2 min on one H200 and 4.9-1.9 min on a TPU v4-8 (accelerator time only;
normalisers and suite on the host not counted). The tiny replica of tests/test_experiment_configs.py (8 slides,
ViT-mu/8, 2 steps, one normaliser row of the six) takes 2.5 min wall on a 2-core CPU shared with other jobs; all six
rows took 10 min.
Result: not yet known.
"""

import os
import runpy

import ml_collections

_DEFAULT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))


def get_config() -> ml_collections.ConfigDict:
    config = _DEFAULT["get_config"]()
    config.data.name = "camelyon16"
    config.data.tile_size = 96  # camelyon16/tile96: 96-px patches at level 0 (~0.24 µm/px)
    config.data.crop_size = 96
    config.model.variant = "S/16"
    config.batch_size = 256
    config.num_steps = 10_000
    config.optimizer.warmup_steps = 1_000
    config.eval.references = ("geometric_only",)
    config.eval.normalizers = ("macenko", "reinhard", "vahadane")
    config.eval.normalizer_encoders = ("geometric_only", "lmc")  # each normaliser in front of both encoders
    config.eval.source_split, config.eval.heldout_splits = "train", ("test",)
    config.eval.source_site = "radboud_umc"
    config.data.train_sites = ("radboud_umc",)  # the encoders pre-train on the source hospital only
    config.eval.source_only = True  # probe and normalisers fitted on Radboud patches; Utrecht is the unseen batch
    config.eval.summary_exclude = ()
    config.eval.max_split_tiles = 50_000
    return config
