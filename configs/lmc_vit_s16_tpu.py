"""LMC ViT-S/16 on Camelyon17-WILDS (train centres 0/3/4), for a Cloud TPU v4-32 or an 8×H100 node.

Unlabelled training on the WILDS `train` split (~302k 96-px patches), K = 2 stain views per patch,
global batch 1024, 100 epochs (~29k steps), bf16 compute. Expected: a few hours on a v4-32; the
LMC promise is checked on the held-out centres (val = centre 1, test = centre 2).

    python -m data_pipelines.build --name camelyon17_wilds --manual_dir /data/camelyon17_v1.0 --data_dir gs://B/tfds
    ./run.sh tpu --name my-v4-32 --zone us-central2-b --config configs/lmc_vit_s16_tpu.py --workdir gs://B/lmc/s16 \
        -- --config.data.data_dir=gs://B/tfds
    # then evaluate on the held-out centres with the eval keys below:
    python -m lmc_jax.main --config configs/lmc_vit_s16_tpu.py --config.mode=evaluate \
        --config.eval.checkpoint=gs://B/lmc/s16 --config.data.data_dir=gs://B/tfds --workdir gs://B/lmc/s16_eval
"""

import os
import runpy

_DEFAULT = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "default.py"))


def get_config():
    config = _DEFAULT["get_config"]()
    config.data.name = "camelyon17_wilds"
    config.data.tile_size = 96  # WILDS patches are 96 × 96
    config.data.crop_size = 96  # views keep the whole patch (flips/rotations still vary)
    config.data.worker_count = 8  # host-side decode; keep fixed across resumes
    config.batch_size = 1024
    config.num_steps = 29_500  # 100 epochs of 302,436 patches
    config.model.variant = "S/16"
    config.model.dtype = "bfloat16"
    config.model.projector_dims = (8192, 8192, 8192)  # the Barlow Twins reference projector
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 2_950  # 10 epochs
    config.mesh.fsdp = 1  # ViT-S fits on every chip; raise for bigger models
    config.checkpoint.every_steps = 1_000
    config.log_every_steps = 100
    config.eval.at_end = False  # evaluate afterwards with --config.mode=evaluate (see the docstring)
    config.eval.heldout_splits = ("id_val", "val", "test")  # in-distribution tiles, centre 1, centre 2
    config.eval.source_site = ""  # the most frequent of train's centres 0, 3, 4; the others are seen, not unseen
    config.eval.summary_exclude = ()
    config.eval.max_split_tiles = 50_000  # per split, held in memory on every host
    config.eval.references = ("untrained", "raw_colour_stats")
    return config
