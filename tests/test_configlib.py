"""Config validation: each bad value is refused naming its key; unknown keys are refused by the CLI."""

import os
import subprocess
import sys

import pytest

from lmc_jax.configlib import ConfigError, validate
from tests.tiny_config import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_default_and_tiny_configs_are_valid():
    validate(tiny_config())


def test_foundation_model_architecture_keys_are_valid():
    config = tiny_config()
    config.model.pool, config.model.mlp, config.model.reg_tokens, config.model.init_values = \
        "cls_patch_mean", "swiglu_packed", 4, 1e-5
    validate(config)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mode", "fit", "config.mode"),
        ("batch_size", 0, "config.batch_size"),
        ("data.crop_size", 40, "config.data.crop_size"),  # larger than the 32-px tile
        ("data.crop_size", 20, "multiple of the patch size"),
        ("model.variant", "Giant/8", "model.variant"),
        ("model.dtype", "int8", "config.model.dtype"),
        ("model.pool", "max", "config.model.pool"),
        ("model.mlp", "relu", "config.model.mlp"),
        ("model.reg_tokens", -1, "config.model.reg_tokens"),
        ("model.image_std", (0.2, 0.0, 0.2), "config.model.image_std"),
        ("optimizer.freeze_encoder_steps", 6, "config.optimizer.freeze_encoder_steps"),  # = num_steps
        ("lmc.num_views", 1, "config.lmc.num_views"),
        ("lmc.stain.hed_jitter", -0.1, "config.lmc.stain.hed_jitter"),
        ("optimizer.warmup_steps", 100, "config.optimizer.warmup_steps"),
        ("eval.references", ("untrained", "imagenet"), "config.eval.references"),
        ("eval.normalizers", ("macenko", "staintools"), "config.eval.normalizers"),
        ("objectives", ("cross_correlation", "supervisd"), "config.objectives"),
        ("supervised.num_classes", 1, "config.supervised.num_classes"),
        ("dann.domain_field", "magnification", "config.dann.domain_field"),
        ("dann.head_lr_scale", 0.0, "config.dann.head_lr_scale"),
        ("lmc.scale.max_zoom", 0.5, "config.lmc.scale.max_zoom"),
        ("dcgan.ratio", 0.3, "config.dcgan.ratio"),  # DCGAN samples need the supervised term
        ("data.val_region_fraction", 1.0, "config.data.val_region_fraction"),
        ("objectives", (), "config.objectives"),
    ],
)
def test_bad_values_name_their_key(key, value, message):
    config = tiny_config()
    parent, _, leaf = key.rpartition(".")
    node = config
    for part in filter(None, parent.split(".")):
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        validate(config)


def test_evaluate_mode_needs_a_checkpoint():
    config = tiny_config()
    config.mode = "evaluate"
    with pytest.raises(ConfigError, match="eval.checkpoint"):
        validate(config)


def test_evaluate_mode_leaves_the_model_to_the_run():
    """mode=evaluate rebuilds the model from the run's config.json: the command line's model keys are not its."""
    config = tiny_config()
    config.mode, config.eval.checkpoint = "evaluate", "runs/x"
    config.data.crop_size, config.model.variant = 20, "mu/8"  # no multiple of patch 8: refused only for training
    validate(config)
    config.mode = "train"
    with pytest.raises(ConfigError, match="multiple of the patch size"):
        validate(config)


def test_cli_refuses_unknown_key_and_wrong_type(tmp_path):
    base = [sys.executable, "-m", "lmc_jax.main", "--config", "configs/default.py", "--workdir", str(tmp_path)]
    unknown = subprocess.run(base + ["--config.optimizer.learnig_rate=0.1"], cwd=ROOT, capture_output=True, text=True)
    assert unknown.returncode != 0
    assert "learnig_rate" in unknown.stderr
    wrong = subprocess.run(base + ["--config.batch_size=many"], cwd=ROOT, capture_output=True, text=True)
    assert wrong.returncode != 0
    assert "batch_size" in wrong.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


@pytest.mark.parametrize("name", ["default", "lmc_vit_s16_tpu", "lmc_vit_b16_tpu"])
def test_shipped_training_configs_are_valid(name):
    import runpy

    config = runpy.run_path(os.path.join(ROOT, "configs", f"{name}.py"))["get_config"]()
    validate(config)
    assert config.batch_size % 8 == 0  # divisible over a typical 8-chip host


def test_bad_evaluation_setting_names_its_key():
    config = tiny_config()
    config.eval.kbet_alpha = 2.0
    with pytest.raises(ConfigError, match="kbet_alpha"):
        validate(config)


def test_cli_reports_a_bad_value_in_one_line_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "lmc_jax.main", "--config", "configs/default.py", "--workdir",
                             str(tmp_path), "--config.lmc.num_views=1"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "error: config.lmc.num_views=1: the cross_correlation term needs at least 2 views"
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "key, value", [("weight", -0.5), ("gamma", 0.0), ("hidden_dims", (64, 0))]
)
def test_bad_dann_values_name_their_key(key, value):
    config = tiny_config()
    config.dann[key] = value
    with pytest.raises(ConfigError, match=rf"config\.dann\.{key}="):
        validate(config)


def test_dann_reference_and_linear_domain_head_are_valid():
    config = tiny_config()
    config.eval.references = ("untrained", "geometric_only", "dann")
    config.dann.hidden_dims = ()
    validate(config)


def test_site_dann_needs_its_number_of_domains_and_dcgan_its_bank():
    config = tiny_config()
    config.objectives, config.dann.domain_field = ("supervised", "dann"), "site"
    with pytest.raises(ConfigError, match=r"config\.dann\.num_domains=0"):
        validate(config)
    config.dann.num_domains = 4
    validate(config)
    config.dcgan.ratio = 0.25
    with pytest.raises(ConfigError, match=r"config\.dcgan\.bank_path=''"):
        validate(config)
    config.dcgan.bank_path = "/tmp/bank.npz"
    validate(config)
    config.objectives, config.lmc.num_views = ("supervised",), 1  # no cross-correlation: one view is enough
    validate(config)
