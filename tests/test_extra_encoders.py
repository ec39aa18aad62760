"""Parsing and validating `config.eval.extra_encoders`, and reading a timm model's architecture."""

import json

import ml_collections
import pytest

from lmc_jax import configlib
from lmc_jax.evaluate import extra_encoders
from lmc_jax.evaluate.extra_encoders import ExtraEncoderError, parse_spec, parse_specs, timm_model_config
from tests.tiny_config import tiny_config


@pytest.fixture
def sources(tmp_path):
    weights = tmp_path / "uni" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"")
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


def test_timm_weights_that_do_not_fit_the_crop_are_refused_before_training(sources):
    weights, _ = sources
    (weights.parent / "config.json").write_text(json.dumps({"architecture": "vit_small_patch32_224"}))
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


def test_timm_architecture_comes_from_config_json(tmp_path):
    weights = tmp_path / "model.safetensors"
    assert timm_model_config(weights, _model()).variant == "Mi/8"  # no config.json: the config's model
    (tmp_path / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "global_pool": "token"}))
    model = timm_model_config(weights, _model())
    assert (model.variant, model.pool, model.dtype) == ("S/16", "cls", "float32")
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "global_pool": "avg",
        "model_args": {"embed_dim": 32, "depth": 2, "num_heads": 2, "patch_size": 8, "class_token": False}}))
    model = timm_model_config(weights, _model(pool="cls"))
    assert (model.variant, model.pool) == ("mu/8", "mean")


@pytest.mark.parametrize("declared, words", [({"architecture": "resnet50"}, "not one of"),
                                             ({"model_args": {"embed_dim": 100, "depth": 3, "num_heads": 4,
                                                              "patch_size": 16}}, "no ViT size")])
def test_unknown_timm_architectures_are_refused(tmp_path, declared, words):
    (tmp_path / "config.json").write_text(json.dumps(declared))
    with pytest.raises(ExtraEncoderError, match=words):
        timm_model_config(tmp_path / "model.safetensors", _model())


def test_crop_is_the_largest_patch_multiple_within_the_data_crop():
    config = tiny_config()  # crop 24
    assert extra_encoders._crop_for(_model("S/16"), config, "w") == 16
    assert extra_encoders._crop_for(_model("mu/8"), config, "w") == 24
    with pytest.raises(ExtraEncoderError, match="larger than data.crop_size"):
        extra_encoders._crop_for(_model("S/32"), config, "w")
