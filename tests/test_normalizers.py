"""Tests for lmc_jax/stain/normalizers.py: the one registry of stain normalisers, and the config derived from it."""

import dataclasses
import importlib.util
import os

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from lmc_jax.errors import UserError
from lmc_jax.stain import normalizers
from tests import stain_tiles

_NORMALIZE_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "normalize.py")


def _normalize_config():
    """configs/normalize.py's get_config(), loaded from the file as the command line does."""
    spec = importlib.util.spec_from_file_location("normalize_config", _NORMALIZE_CONFIG)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config()


@pytest.fixture(scope="module")
def slide():
    return stain_tiles.slide_tiles(size=64)


def test_the_registry_names_its_entries():
    assert normalizers.NAMES == ("macenko", "reinhard", "vahadane")
    for name, normalizer in normalizers.NORMALIZERS.items():
        assert normalizers.get(name) is normalizer and normalizer.name == name
        assert dataclasses.is_dataclass(normalizer.config_class)
        assert normalizer.params_class.__module__ == normalizer.module.__name__


def test_unknown_names_raise_a_user_error_naming_the_choices(slide):
    with pytest.raises(UserError, match=r"'spams'.*\['macenko', 'reinhard', 'vahadane'\]"):
        normalizers.get("spams")
    with pytest.raises(UserError, match=r"'spams'"):
        normalizers.fit_transform_fn("spams", slide[1])
    with pytest.raises(UserError, match=r"config.eval.normalizers: unknown \['spams'\]; choose from \['macenko'"):
        normalizers.fit_normalizers(("reinhard", "spams"), slide[0])


@pytest.mark.parametrize("name", normalizers.NAMES)
def test_fit_transform_fn_is_the_module_fit_then_transform(slide, name):
    tiles, reference = slide
    module = normalizers.get(name).module
    transform = normalizers.fit_transform_fn(name, reference)
    output = transform(tiles)
    assert isinstance(output, np.ndarray) and output.dtype == np.uint8 and output.shape == tiles.shape
    np.testing.assert_array_equal(output, np.asarray(module.transform(tiles, module.fit(reference))[0]))
    assert np.abs(output.astype(int) - tiles).mean() > 0.5  # it did change the tiles


def test_fit_transform_fn_uses_the_given_settings(slide):
    tiles, reference = slide
    settings = normalizers.get("macenko").config_class(alpha=5.0)
    module = normalizers.get("macenko").module
    output = normalizers.fit_transform_fn("macenko", reference, settings)(tiles)
    expected = module.transform(tiles, module.fit(reference, settings), settings)[0]
    np.testing.assert_array_equal(output, np.asarray(expected))
    assert not np.array_equal(output, normalizers.fit_transform_fn("macenko", reference)(tiles))


def test_fit_normalizers_fits_each_name_to_the_source_tiles(slide):
    tiles, _ = slide
    transforms = normalizers.fit_normalizers(("reinhard", "macenko"), tiles)
    assert list(transforms) == ["reinhard", "macenko"]
    for name, transform in transforms.items():
        module = normalizers.get(name).module
        np.testing.assert_array_equal(transform(tiles[:3]), np.asarray(module.transform(tiles[:3], module.fit(tiles))[0]))


@pytest.mark.parametrize("name", normalizers.NAMES)
def test_the_normalize_config_holds_each_dataclass_default(name):
    config = _normalize_config()
    defaults = dataclasses.asdict(normalizers.get(name).config_class())
    block = config[name].to_dict()
    assert block == defaults
    assert {key: type(value) for key, value in block.items()} == {key: type(value) for key, value in defaults.items()}


def test_command_line_overrides_of_a_method_block_keep_their_types():
    argv = ["prog", f"--config={_NORMALIZE_CONFIG}", "--config.macenko.alpha=1.5", "--config.macenko.io=250",
            "--config.vahadane.iterations=12"]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "normalize config", flag_values=values, sys_argv=argv)
    values(argv)
    assert values.config.macenko.alpha == 1.5
    assert values.config.macenko.io == 250.0 and isinstance(values.config.macenko.io, float)
    assert values.config.vahadane.iterations == 12 and isinstance(values.config.vahadane.iterations, int)
