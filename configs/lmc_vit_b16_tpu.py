"""LMC ViT-B/16 on Camelyon17-WILDS (train centres 0/3/4), for a Cloud TPU v4-64 / v5p-64 or 2×8 H100.

As configs/lmc_vit_s16_tpu.py with the base model: global batch 2048, 100 epochs (~14.8k steps), bf16,
parameters and optimizer state sharded 4-way (FSDP) to leave room for the 8192-wide projector.

    ./run.sh tpu --name my-v4-64 --zone us-central2-b --config configs/lmc_vit_b16_tpu.py --workdir gs://B/lmc/b16 \
        -- --config.data.data_dir=gs://B/tfds
"""

import os
import runpy

_S16 = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "lmc_vit_s16_tpu.py"))


def get_config():
    config = _S16["get_config"]()
    config.model.variant = "B/16"
    config.batch_size = 2048
    config.num_steps = 14_800  # 100 epochs
    config.optimizer.learning_rate = 6e-4
    config.optimizer.warmup_steps = 1_480
    config.mesh.fsdp = 4
    return config
