"""The methods registry: each method declared once; references derive their training config from the base."""

import numpy as np
import pytest

from lmc_jax import configlib, methods
from lmc_jax.errors import UserError
from tests.tiny_config import tiny_config


def _mean_colour(tiles: np.ndarray) -> np.ndarray:
    return tiles.astype(np.float32).mean(axis=(1, 2))


def test_every_reference_is_a_method_and_only_methods_that_train_have_a_training_config():
    assert methods.LMC in methods.METHODS and methods.LMC not in methods.REFERENCES
    assert set(methods.REFERENCES) == set(methods.METHODS) - {methods.LMC}
    config = tiny_config()
    config.eval.references = methods.REFERENCES
    configlib.validate(config)  # every registered reference is a valid config.eval.references entry
    assert methods.trained_references(config) == ["geometric_only", "dann"]
    assert [methods.workdir_of("/w", n).as_posix() for n in ("lmc", "dann")] == ["/w", "/w/references/dann"]


def test_derived_configs_change_only_their_keys_and_leave_the_base_alone():
    base = tiny_config()
    before = base.to_dict()
    dann = methods.training_config(base, "dann")
    assert base.to_dict() == before
    changed = {k for k in before if before[k] != dann.to_dict()[k]}
    assert changed == {"lmc", "objectives"}
    assert {k for k, v in before["lmc"].items() if dann.to_dict()["lmc"][k] != v} == {"stain_views"}


def test_a_transform_in_front_of_an_encoder_is_one_more_method():
    images = np.random.default_rng(0).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    features = methods.with_transforms({"enc": _mean_colour, "other": _mean_colour}, {"invert": lambda x: 255 - x},
                                       ["enc"])
    assert list(features) == ["enc", "other", "invert+enc"]
    np.testing.assert_allclose(features["invert+enc"](images), 255.0 - features["enc"](images), rtol=1e-6)
    broken = methods.with_transforms({"enc": _mean_colour}, {"to_float": lambda im: im / 255.0}, ["enc"])
    with pytest.raises(ValueError, match="input transform 'to_float' must map uint8"):
        broken["to_float+enc"](images)
    with pytest.raises(UserError, match=r"normalizer_encoders names \['lmc'\]"):
        methods.with_transforms({"enc": _mean_colour}, {"invert": lambda x: x}, ["lmc"])


def test_raw_colour_is_the_centre_crops_channel_mean_and_std_in_unit_range():
    config = tiny_config()
    images = np.random.default_rng(1).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    stats = methods.raw_colour_features(config)(images)
    lo = (32 - config.data.crop_size) // 2
    crop = images[:, lo:lo + config.data.crop_size, lo:lo + config.data.crop_size].astype(np.float64) / 255.0
    np.testing.assert_allclose(stats, np.concatenate([crop.mean((1, 2)), crop.std((1, 2))], 1), rtol=1e-5)
