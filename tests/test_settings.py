"""Tests for lmc_jax.evaluate.settings: config.eval keys map to Settings and bad values name their key."""

import ml_collections
import pytest

from lmc_jax.evaluate.settings import Settings


def test_from_config_takes_known_keys_and_keeps_defaults_for_the_rest():
    eval_config = ml_collections.ConfigDict({"probe_l2": 0.1, "bootstrap_replicates": 0, "batch_size": 256,
                                             "protocols": ["cross_site"]})
    s = Settings.from_config(eval_config)
    assert s.probe_l2 == 0.1 and s.bootstrap_replicates == 0 and s.protocols == ("cross_site",)
    assert s.ece_bins == Settings().ece_bins
    assert s.to_json()["protocols"] == ["cross_site"]


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
    with pytest.raises(ValueError, match=f"config.eval.{key}=.*{fix}"):
        Settings(**{key: value})


def test_detection_radius_is_off_by_default_read_from_config_and_not_negative():
    assert Settings().detection_radius == 0.0
    assert Settings.from_config(ml_collections.ConfigDict({"detection_radius": 30.0})).detection_radius == 30.0
    with pytest.raises(ValueError, match=r"config.eval.detection_radius=-1.0: must be ≥ 0 px .*30.0 for MIDOG"):
        Settings(detection_radius=-1.0)
    with pytest.raises(ValueError, match="config.eval.detection_radius=nan"):
        Settings(detection_radius=float("nan"))
