"""BreaKHis leave-one-magnification-out (the second paper's protocol) on the user's archive: mode=lomo.

Folds: one per held-out magnification (40X, 100X, 200X, 400X). Patients: the builder's patient-disjoint 70/30
train/test split, and 20% of the train patients of each class kept out of training for model selection (the
checkpoint of best validation AUC, the F1 threshold, the domain probe), so no patient trains, validates and
tests. Per fold, every model of config.lomo.models trains on the other three magnifications' fit patients and is
scored on the held-out magnification's test patients: the supervised baseline, + class-conditional DCGAN samples,
the domain-general model (supervised + a 4-way gradient-reversal magnification head), LMC (+ scale views) with a
linear probe, LMC fine-tuned, the untrained encoder with a probe, and the raw-colour probe. The table (WORKDIR/lomo.md) is laid out like the paper's:
AUC, F1, balanced accuracy, Brier, ECE (patient-bootstrap 95% intervals), signature size at matched AUC,
cross-fold signature Jaccard and the held-out domain-probe accuracy.

Data layout (config.data.manual_dir; nothing is downloaded): the unpacked BreaKHis_v1/ folder
(BreaKHis_v1/histology_slides/breast/{benign,malignant}/SOB/<type>/<patient>/<40X|100X|200X|400X>/*.png, as the
UFPR page ships it); `breakhis/resize224` (each image, shorter side to 224 px, centre crop: one tile per image, the
paper's input) is built on first use.

    python -m lmc_jax.main --config configs/breakhis_lomo.py --workdir runs/breakhis_lomo \\
        --config.data.manual_dir=/data/BreaKHis

Runtime, estimated from compiled FLOPs (not measured; BENCHMARKS.md "Expected runtimes of the real-archive
configs"): 4 folds × 5 trainings of ViT-S/16 at 224 px for 3,000 steps (batch 128), one DCGAN and one fine-tuning
per fold, 3.7e17 FLOPs in all: at 16-40% MFU 39-15 min on one H200 and 35-14 min on a TPU v4-8 (accelerator time
only). The replica run of tests/test_lomo_mode.py exercises the whole path on a tiny tree. Published (the paper,
ResNet-class models): the domain-general model has the best discrimination (clearest with 200X held out), Brier
0.063 vs 0.089, signatures 306 vs 1,074 dims at AUC 0.967 vs 0.965; this config's own result: not yet known.
"""

import os
import runpy

import ml_collections

_DEFAULT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))


def get_config() -> ml_collections.ConfigDict:
    config = _DEFAULT["get_config"]()
    config.mode = "lomo"
    config.data.name = "breakhis"
    config.data.builder_config = "resize224"
    config.data.tile_size = 224
    config.data.crop_size = 224
    config.data.val_region_fraction = 0.2  # validation patients (per class) for model selection
    config.model.variant = "S/16"
    config.batch_size = 128
    config.num_steps = 3_000
    config.optimizer.warmup_steps = 300
    config.eval.at_end = False
    config.dann.weight = 0.3  # domain_general: beside a cross-entropy of ~0.7, not Barlow Twins' hundreds
    config.eval.bootstrap_replicates = 1000
    config.dcgan.num_steps = 5_000
    config.dcgan.width = 64
    config.lomo.finetune_steps = 1_000
    return config
