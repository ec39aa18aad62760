"""The smallest config that runs every part of training: for tests only."""

import importlib.util
import os

import ml_collections

from lmc_jax.evaluate.settings import Settings

_DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "default.py")


def default_config() -> ml_collections.ConfigDict:
    """configs/default.py's config, as the command line loads it."""
    spec = importlib.util.spec_from_file_location("default_config", _DEFAULT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


def default_settings(**overrides) -> Settings:
    """The evaluation Settings of configs/default.py, with `overrides`."""
    return Settings.from_config(default_config().eval, **overrides)


def tiny_config() -> ml_collections.ConfigDict:
    """configs/default.py shrunk: ViT-mu/8, 32-px tiles (24-px views), batch 16, a few steps."""
    config = default_config()
    config.model.variant = "mu/8"
    config.model.projector_dims = (32, 32)
    config.data.tile_size = 32
    config.data.crop_size = 24
    config.batch_size = 16
    config.num_steps = 6
    config.optimizer.warmup_steps = 2
    config.checkpoint.every_steps = 2
    config.log_every_steps = 2
    config.eval.batch_size = 32
    config.eval.bootstrap_replicates = 50
    config.eval.protocol_folds = 3
    config.eval.signature_stability_rounds = 0
    config.eval.normalizers = ("reinhard",)
    config.eval.normalizer_encoders = ("geometric_only",)
    config.eval.normalizer_fit_tiles = 32
    return config
