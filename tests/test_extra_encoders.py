"""Parsing and validating `config.eval.extra_encoders`, and reading a timm model's architecture."""

import json

import jax
import ml_collections
import pytest

from lmc_jax import configlib
from lmc_jax.evaluate import extra_encoders
from lmc_jax.evaluate.extra_encoders import ExtraEncoderError, parse_spec, parse_specs, timm_model_config
from lmc_jax.export.timm import TimmWeightsError
from tests.tiny_config import tiny_config


def _timm_weights(path, variant="mu/8", **model_keys):
    """timm-layout weights of our randomly initialised encoder of `variant` (and architecture keys) at `path`."""
    import safetensors.numpy  # pylint: disable=import-outside-toplevel

    from lmc_jax import parallel, runs  # pylint: disable=import-outside-toplevel
    from lmc_jax.export.timm import to_timm  # pylint: disable=import-outside-toplevel

    config = tiny_config()
    config.model.variant = variant
    config.model.update(model_keys)
    config.data.crop_size = config.data.tile_size = 3 * int(variant.rpartition("/")[2])  # a 3 × 3 patch grid
    _, params = runs.initial_params(config, parallel.make_mesh())
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.numpy.save_file(to_timm(jax.device_get(params["encoder"])), str(path))
    return path


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    return _timm_weights(tmp_path_factory.mktemp("weights") / "model.safetensors")


@pytest.fixture
def sources(tiny_weights, tmp_path):
    weights = tmp_path / "uni" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(tiny_weights.read_bytes())
    workdir = tmp_path / "run_a"
    (workdir / "checkpoints").mkdir(parents=True)
    (workdir / "config.json").write_text(tiny_config().to_json())
    return weights, workdir


def test_names_default_to_the_weights_directory_file_stem_or_workdir():
    extra = parse_spec("timm:/w/uni/model.safetensors")
    assert (extra.name, extra.kind, str(extra.path)) == ("uni", "timm", "/w/uni/model.safetensors")
    assert parse_spec("timm:/w/vit_s.bin").name == "vit_s"
    assert parse_spec("/runs/baseline").name == "baseline"
    extra = parse_spec("mine=/runs/baseline")
    assert (extra.name, extra.kind, str(extra.path)) == ("mine", "workdir", "/runs/baseline")


def test_an_equals_sign_inside_a_path_is_not_a_name():
    extra = parse_spec("/runs/lr=3e-4/x")
    assert extra.kind == "workdir" and str(extra.path) == "/runs/lr=3e-4/x" and extra.name == "x"


@pytest.mark.parametrize("spec, words", [("timm:", "names no path"), ("a b=timm:/w.bin", "method name"),
                                         ("=", "names no path"), ("x=", "names no path")])
def test_malformed_specs_are_refused_naming_them(spec, words):
    with pytest.raises(ExtraEncoderError, match=words):
        parse_spec(spec)


def _parse(*specs):
    config = tiny_config()
    config.model.variant = "mu/8"
    config.eval.extra_encoders = specs
    return parse_specs(config, reserved=("lmc", "untrained"))


def test_specs_must_exist_and_have_new_names(sources, tmp_path):
    weights, workdir = sources
    assert [e.name for e in _parse(f"timm:{weights}", str(workdir))] == ["uni", "run_a"]
    for specs, words in [((f"lmc=timm:{weights}",), "'lmc' is already used"),
                         ((f"timm:{weights}", f"uni={workdir}"), "'uni' is already used"),
                         ((f"timm:{tmp_path / 'missing.safetensors'}",), "does not exist"),
                         ((str(tmp_path),), "expected the workdir of a training run"),
                         ((f"untrained={workdir}",), "'untrained' is already used"),
                         (("timm:gs://bucket/model.safetensors",), "local file")]:
        with pytest.raises(ExtraEncoderError, match=f"entry {specs[-1]!r}: .*{words}"):
            _parse(*specs)


def test_timm_weights_that_do_not_fit_the_crop_are_refused_before_training(tmp_path):
    weights = _timm_weights(tmp_path / "p32" / "model.safetensors", variant="mu/32")
    with pytest.raises(ExtraEncoderError, match="patch size 32 is larger than data.crop_size=24"):
        _parse(f"timm:{weights}")


def test_config_validation_refuses_a_clash_with_a_reference(sources):
    weights, _ = sources
    config = tiny_config()
    config.eval.extra_encoders = (f"untrained=timm:{weights}",)
    with pytest.raises(configlib.ConfigError, match="config.eval.extra_encoders entry .*already used"):
        configlib.validate(config)
    config.eval.extra_encoders = (f"timm:{weights}",)
    configlib.validate(config)


def _model(variant="Mi/8", pool="mean"):
    return ml_collections.ConfigDict(dict(variant=variant, pool=pool, dtype="float32", projector_dims=(8,)))


def test_timm_architecture_comes_from_the_weights_and_their_config_json(sources):
    weights, _ = sources
    model = timm_model_config(weights, _model("mu/8", pool="mean"))  # no config.json: shapes + the config's heads
    assert (model.variant, model.pool, model.reg_tokens, model.mlp, model.dtype) == ("mu/8", "cls", 0, "gelu",
                                                                                      "float32")
    (weights.parent / "config.json").write_text(json.dumps({"architecture": "vit_tiny_patch16_224",
                                                            "global_pool": "avg", "model_args": {"num_heads": 2}}))
    assert timm_model_config(weights, _model()).pool == "patch_mean"


def test_foundation_model_features_are_read_from_the_weights(tmp_path):
    """Register tokens, packed SwiGLU and layer scale (Virchow2's parts) come from the weights' shapes."""
    weights = _timm_weights(tmp_path / "fm" / "model.safetensors", reg_tokens=4, mlp="swiglu_packed",
                            init_values=1e-5, mlp_ratio=5.3375, pool="cls_patch_mean")
    (weights.parent / "config.json").write_text(json.dumps({"architecture": "vit_huge_patch14_224",
                                                            "global_pool": "", "model_args": {"num_heads": 2}}))
    model = timm_model_config(weights, _model())
    assert (model.variant, model.reg_tokens, model.mlp, model.init_values) == ("mu/8", 4, "swiglu_packed", 1e-5)


def test_weights_whose_heads_are_unknown_are_refused(sources):
    weights, _ = sources
    (weights.parent / "config.json").write_text(json.dumps({"architecture": "resnet50"}))
    with pytest.raises(TimmWeightsError, match="attention heads"):
        timm_model_config(weights, _model())


def test_crop_is_the_largest_patch_multiple_within_the_data_crop():
    config = tiny_config()  # crop 24
    assert extra_encoders._crop_for(_model("S/16"), config, "w") == 16
    assert extra_encoders._crop_for(_model("mu/8"), config, "w") == 24
    with pytest.raises(ExtraEncoderError, match="larger than data.crop_size"):
        extra_encoders._crop_for(_model("S/32"), config, "w")
