"""Camelyon17-WILDS on its official splits, reported in the WILDS leaderboard's format.

Per seed: LMC pre-trained (no labels) on the `train` split (hospitals 0, 3, 4; 302,436 96-px patches), then a
linear probe fitted on the train split's embeddings and labels, and the encoder + a linear head fine-tuned with
cross-entropy on the train split (the checkpoint of best OOD-val accuracy kept, WILDS' model selection); accuracy
on `id_val` (hospitals 0/3/4), the OOD validation hospital 1 (`val`) and the OOD test hospital 2 (`test`), mean ±
std over the seeds, one leaderboard row per head, beside ERM's
published test accuracy 70.3 ± 6.4 (Koh et al. 2021, 10 seeds). The probe fits on up to eval.max_split_tiles
tiles of each split held in memory; fine-tuning trains on the same in-memory train tiles.

Data layout (config.data.manual_dir; nothing is downloaded): camelyon17_v1.0/metadata.csv and
camelyon17_v1.0/patches/patient_PPP_node_N/patch_patient_PPP_node_N_x_X_y_Y.png, as the WILDS package downloads
them; the tile96 data set is built from it on first use.

    python -m lmc_jax.main --config configs/camelyon17_wilds.py --workdir runs/wilds \\
        --config.data.manual_dir=/data/camelyon17_v1.0

Writes WORKDIR/seed_<s>/ (one training run per seed) and WORKDIR/leaderboard.{json,md}.
Runtime, estimated from compiled FLOPs (not measured; BENCHMARKS.md "Expected runtimes of the real-archive
configs"): 3.2e17 FLOPs, at 16-40% MFU 33-13 min on one H200 and 30-12 min on a TPU v4-8 (accelerator time only).
The tiny replica of tests/test_experiment_configs.py (60 patches, ViT-mu/8, 2 seeds × 2 steps, 2 fine-tune steps
each) takes 110 s wall on a 2-core CPU shared with other jobs. Result: not yet known (the replica's random pixels
and labels give chance accuracy).
"""

import os
import runpy

import ml_collections

_DEFAULT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))


def get_config() -> ml_collections.ConfigDict:
    config = _DEFAULT["get_config"]()
    config.mode = "wilds"
    config.data.name = "camelyon17_wilds"
    config.data.tile_size = 96  # WILDS patches are 96 × 96
    config.data.crop_size = 96
    config.model.variant = "S/16"
    config.batch_size = 512
    config.num_steps = 20_000  # ~34 epochs of the train split
    config.optimizer.warmup_steps = 2_000
    config.eval.at_end = False
    config.eval.max_split_tiles = 50_000  # per split, held in memory for the probe
    config.wilds = ml_collections.ConfigDict()
    config.wilds.seeds = (0, 1, 2)  # one pre-training run per seed
    config.wilds.probe_split = "train"  # the linear probe's training data (hospitals 0/3/4)
    config.wilds.eval_splits = ("id_val", "val", "test")  # scored: ID val, OOD val (hospital 1), test (hospital 2)
    # Fine-tuned row: encoder + linear head, cross-entropy on probe_split's tiles (AdamW, 10% warm-up, cosine).
    config.wilds.finetune_steps = 3_000  # 0: the head stays at its initialisation, the encoder as pre-trained
    config.wilds.finetune_batch_size = 256
    config.wilds.finetune_learning_rate = 1e-4
    config.wilds.finetune_weight_decay = 0.05
    config.wilds.finetune_eval_every = 250  # candidates every 250 steps and at the end
    config.wilds.finetune_select_split = "val"  # model selection on OOD val (hospital 1), as WILDS' leaderboard
    return config
