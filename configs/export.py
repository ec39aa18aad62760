"""Export a trained LMC encoder to PyTorch/timm: `model.safetensors` + timm-style `config.json`.

The architecture, image size and pooling are read from the training run's own config.json, so
only the run, the step and the output are given here. With torch/timm installed (`./run.sh test`
installs them) the export is loaded into timm and its embeddings compared with ours before it
is moved into place (seconds on a 2-core CPU for ViT-S/16). Then, in PyTorch:

    timm.create_model("local-dir:DIR", pretrained=True, num_classes=0)

    python -m lmc_jax.main --config configs/export.py --config.checkpoint=runs/default \
        --config.output=runs/default/timm
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.mode = "export"
    config.checkpoint = ""  # workdir of a training run (holds config.json and checkpoints/)
    config.step = -1  # checkpointed step to export; -1 = the latest
    config.output = ""  # export directory; empty = <--workdir>/export
    config.use_ema = True  # export the EMA of the weights when the run kept one (optimizer.ema_decay > 0)
    config.include_projector = False  # also write projector.safetensors (torch layout, keys projector.*)
    config.overwrite = False  # replace a non-empty output directory
    config.verify = True  # load the export into timm and compare embeddings (skipped without torch/timm)
    config.verify_images = 4  # random images used for that comparison
    config.verify_tolerance = 1e-4  # max abs difference allowed (float32)
    return config
