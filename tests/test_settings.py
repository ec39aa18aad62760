"""Tests for lmc_jax.evaluate.settings: config.eval keys map to Settings and bad values name their key."""

import ml_collections
import pytest

from lmc_jax.errors import ConfigError
from lmc_jax.evaluate.settings import Settings
from tests.tiny_config import default_config, default_settings


def test_from_config_takes_every_knob_from_the_config_and_ignores_other_keys():
    eval_config = default_config().eval
    eval_config.update(probe_l2=0.1, bootstrap_replicates=0, protocols=["cross_site"])
    s = Settings.from_config(eval_config)
    assert s.probe_l2 == 0.1 and s.bootstrap_replicates == 0 and s.protocols == ("cross_site",)
    assert s.ece_bins == default_config().eval.ece_bins
    assert s.to_json()["protocols"] == ["cross_site"]
    assert Settings.from_config(eval_config, probe_l2=0.5).probe_l2 == 0.5


def test_a_config_without_a_knob_is_refused_naming_it():
    with pytest.raises(ConfigError, match=r"config.eval lacks \['probe_l2'\]"):
        Settings.from_config(ml_collections.ConfigDict({k: v for k, v in default_config().eval.items()
                                                        if k != "probe_l2"}))


@pytest.mark.parametrize(("key", "value", "fix"), [
    ("bootstrap_replicates", 20, "0 \\(off\\) or ≥ 50"),
    ("bootstrap_unit", "patient", "choose one of"),
    ("protocols", ("cross_site", "k_fold"), "choose from"),
    ("protocol_folds", 2, "≥ 3"),
    ("kbet_alpha", 1.5, "in \\(0, 1\\)"),
    ("probe_val_fraction", 0.0, "in \\(0, 1\\)"),
    ("min_site_samples", 1, "≥ 2"),
])
def test_bad_values_raise_naming_the_config_key(key, value, fix):
    with pytest.raises(ConfigError, match=f"config.eval.{key}=.*{fix}"):
        default_settings(**{key: value})


def test_detection_radius_is_off_by_default_and_not_negative():
    assert default_settings().detection_radius == 0.0
    assert default_settings(detection_radius=30.0).detection_radius == 30.0
    with pytest.raises(ConfigError, match=r"config.eval.detection_radius=-1.0: must be ≥ 0 px .*30.0 for MIDOG"):
        default_settings(detection_radius=-1.0)
    with pytest.raises(ConfigError, match="config.eval.detection_radius=nan"):
        default_settings(detection_radius=float("nan"))
