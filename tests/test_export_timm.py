"""Flax ⇄ timm: exact round trip, embeddings equal to timm's (random images and real slide tiles), imports of
timm weights (head, layer scale, no_embed_class, resampled positions), and bad input refused by name."""

import json
import logging
import pathlib

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipelines import tiling
from lmc_jax.export.parity import encoder_embeddings
from lmc_jax.export.load import apply_init_from, init_from_path, load_timm_weights, read_state_dict
from lmc_jax.export.timm import TimmWeightsError, from_timm, hub_config, timm_spec, to_timm
from lmc_jax.export.write import write_export
from lmc_jax.models.vit import IMAGE_MEAN, IMAGE_STD, ViT

TOLERANCE = 1e-4  # max abs, float32 (the bar)


def _model_config(variant: str, pool: str) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(variant=variant, pool=pool, dtype="float32", projector_dims=(8,)))


def _params(variant: str, image_size: int, pool: str, seed: int = 0) -> dict:
    """Random encoder params (numpy, fast): kernels ~ N(0, 1/fan_in), every other leaf its init ± N(0, 0.05),
    so LayerNorm scales, biases and the class token all carry information."""
    abstract = nnx.eval_shape(lambda: ViT(variant, image_size, pool=pool, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(seed)

    def sample(path, leaf):
        name = str(path[-1].key)
        if name == "kernel":
            return (rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))).astype(np.float32)
        return (float(name == "scale") + rng.normal(0, 0.05, leaf.shape)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(sample, nnx.to_pure_dict(nnx.split(abstract, nnx.Param)[1]))


def _export(params: dict, variant: str, pool: str, image_size: int, directory: pathlib.Path) -> pathlib.Path:
    write_export(directory, {"model.safetensors": to_timm(params)},
                 hub_config(timm_spec(variant, pool, image_size), {}))
    return directory


def _timm_embed(model, images: np.ndarray) -> np.ndarray:
    import torch

    x = (images - np.asarray(IMAGE_MEAN, np.float32)) / np.asarray(IMAGE_STD, np.float32)
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _perturb_torch(model, seed: int):
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


@pytest.fixture(scope="module")
def slide_tiles() -> np.ndarray:
    """Two 224-px tissue tiles of the embedded H&E slide, float32 in [0, 1]."""
    image = tiling.read_slide_region(tiling.locate_cmu_slide())
    coords = tiling.tile_grid(tiling.tissue_mask(image), 224, 224, 0.9)
    assert len(coords) >= 2
    tiles = [image[y:y + 224, x:x + 224] for y, x in (coords[0], coords[len(coords) // 2])]
    return np.stack(tiles).astype(np.float32) / 255.0


def _images(slide_tiles: np.ndarray, size: int) -> np.ndarray:
    """A random image and two real tiles (cropped to `size`), [3, size, size, 3] in [0, 1]."""
    random = np.random.default_rng(1).uniform(size=(1, size, size, 3)).astype(np.float32)
    return np.concatenate([random, slide_tiles[:, :size, :size]])


@pytest.mark.parametrize("variant,image_size,pool", [("mu/8", 32, "cls"), ("mu/8", 32, "mean"), ("Ti/16", 224, "cls")])
def test_round_trip_is_exact(tmp_path, variant, image_size, pool):
    params = _params(variant, image_size, pool)
    directory = _export(params, variant, pool, image_size, tmp_path / "export")
    back = load_timm_weights(directory / "model.safetensors", _model_config(variant, pool), image_size)
    assert jax.tree.structure(back) == jax.tree.structure(params)
    for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(got, want)


# Ti/16 and S/16 at 224 px are timm's registered models as they are; S/8 at 112 px keeps the test fast.
PARITY_CASES = [("mu/8", 32), ("Ti/16", 224), ("S/16", 224), ("S/8", 112)]


@pytest.mark.parametrize("variant,image_size", PARITY_CASES)
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_export_loads_in_timm_and_embeds_the_same(timm, slide_tiles, tmp_path, caplog, variant, image_size, pool):
    params = _params(variant, image_size, pool)
    directory = _export(params, variant, pool, image_size, tmp_path / "export")
    spec = timm_spec(variant, pool, image_size)
    standard = image_size == 224 and variant != "mu/8" and pool == "cls"  # registered as it is: no kwargs
    with caplog.at_level(logging.INFO, logger="timm"):
        model = timm.create_model(spec.architecture, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay=dict(file=str(directory / "model.safetensors")),
                                  **({} if standard else spec.model_args))
    for phrase in ("Missing keys", "Unexpected keys", "Resized position embedding"):
        assert phrase not in caplog.text
    images = _images(slide_tiles, image_size)
    ours = encoder_embeddings(params, variant, pool, image_size, images)
    assert ours.shape == (3, spec.num_features) and np.abs(ours).max() > 0.1
    np.testing.assert_allclose(_timm_embed(model.eval(), images), ours, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_export_dir_loads_strictly_from_its_config_json(timm, tmp_path, pool):
    import safetensors.torch

    params = _params("mu/8", 32, pool)
    directory = _export(params, "mu/8", pool, 32, tmp_path / "export")
    model = timm.create_model(f"local-dir:{directory}", pretrained=True, num_classes=0)
    built = timm.create_model(timm_spec("mu/8", pool, 32).architecture, num_classes=0,
                              **timm_spec("mu/8", pool, 32).model_args)
    built.load_state_dict(safetensors.torch.load_file(directory / "model.safetensors"), strict=True)
    for (name, got), want in zip(model.state_dict().items(), built.state_dict().values(), strict=True):
        assert got.equal(want), name
    assert model.pretrained_cfg["mean"] == list(IMAGE_MEAN) and model.global_pool == ("token" if pool == "cls" else "avg")
    write_export(tmp_path / "extra", {"model.safetensors": {**to_timm(params), "extra.weight": np.ones(2)}},
                 hub_config(timm_spec("mu/8", pool, 32), {}))
    with pytest.raises(RuntimeError, match="extra.weight"):  # the local-dir route loads strictly
        timm.create_model(f"local-dir:{tmp_path / 'extra'}", pretrained=True, num_classes=0)


@pytest.mark.parametrize("variant,image_size", [("mu/8", 32), ("Ti/16", 224)])
@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_imported_timm_weights_reproduce_timm(timm, slide_tiles, tmp_path, variant, image_size, pool):
    import safetensors.torch
    import torch

    model = _perturb_torch(timm.create_model(timm_spec(variant, pool, image_size).architecture, num_classes=0,
                                             **timm_spec(variant, pool, image_size).model_args), seed=3)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "w.safetensors")
    torch.save(model.state_dict(), tmp_path / "w.pth")
    images = _images(slide_tiles, image_size)
    want = _timm_embed(model, images)
    params = load_timm_weights(tmp_path / "w.safetensors", _model_config(variant, pool), image_size)
    from_pickle = load_timm_weights(tmp_path / "w.pth", _model_config(variant, pool), image_size)
    for got, same in zip(jax.tree.leaves(params), jax.tree.leaves(from_pickle), strict=True):
        np.testing.assert_array_equal(got, same)
    got = encoder_embeddings(params, variant, pool, image_size, images)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def _timm_mu(timm, image_size: int = 32, **kwargs):
    args = dict(timm_spec("mu/8", "cls", image_size).model_args, **kwargs)
    return _perturb_torch(timm.create_model("vit_tiny_patch16_224", **args), seed=5)


def _pooled(model, images: np.ndarray, mean=IMAGE_MEAN, std=IMAGE_STD) -> np.ndarray:
    """timm features before its classifier (pre-logits), inputs normalised with (mean, std)."""
    import torch

    x = (images - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    with torch.no_grad():
        features = model.forward_features(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
        return model.forward_head(features, pre_logits=True).numpy()


@pytest.mark.parametrize("feature", ["head", "layer_scale", "no_embed_class"])
def test_imports_adapt_head_layer_scale_and_no_embed_class(timm, slide_tiles, tmp_path, caplog, feature):
    import safetensors.torch

    kwargs = dict(head=dict(num_classes=5), layer_scale=dict(num_classes=0, init_values=0.3),
                  no_embed_class=dict(num_classes=0, no_embed_class=True))[feature]
    model = _timm_mu(timm, **kwargs)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "w.safetensors")
    images = _images(slide_tiles, 32)
    with caplog.at_level(logging.INFO):
        params = load_timm_weights(tmp_path / "w.safetensors", _model_config("mu/8", "cls"), 32)
    assert dict(head="head dropped", layer_scale="layer scale folded", no_embed_class="no_embed_class")[feature] \
        in caplog.text
    got = encoder_embeddings(params, "mu/8", "cls", 32, images)
    np.testing.assert_allclose(got, _pooled(model, images), rtol=0, atol=TOLERANCE)


def test_declared_input_normalisation_is_folded_into_the_patch_embedding(timm, slide_tiles, tmp_path, caplog):
    """Weights trained on (x − 0.5)/0.5 inputs (timm's augreg ViTs) embed as timm does with that normalisation."""
    import safetensors.torch

    model = _timm_mu(timm, num_classes=0)
    safetensors.torch.save_file(model.state_dict(), tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "model_args": timm_spec("mu/8", "cls", 32).model_args,
        "pretrained_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}))
    images = _images(slide_tiles, 32)
    with caplog.at_level(logging.INFO):
        params = load_timm_weights(tmp_path / "model.safetensors", _model_config("mu/8", "cls"), 32)
    assert "input normalisation" in caplog.text
    got = encoder_embeddings(params, "mu/8", "cls", 32, images)
    want = _pooled(model, images, mean=(0.5,) * 3, std=(0.5,) * 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    assert np.abs(want - _pooled(model, images)).max() > 100 * TOLERANCE  # the normalisation matters


@pytest.mark.parametrize("image_size", [24, 48])
def test_position_embedding_resampled_like_timm(timm, slide_tiles, tmp_path, image_size):
    source = _timm_mu(timm, image_size=32, num_classes=0)
    path = tmp_path / "w.safetensors"
    import safetensors.torch

    safetensors.torch.save_file(source.state_dict(), path)
    args = timm_spec("mu/8", "cls", image_size).model_args
    resized = timm.create_model("vit_tiny_patch16_224", pretrained=True, num_classes=0,
                                pretrained_cfg_overlay=dict(file=str(path)), **args).eval()
    params = load_timm_weights(path, _model_config("mu/8", "cls"), image_size)
    assert params["pos_embed"].shape == (1, 1 + (image_size // 8) ** 2, 32)
    images = np.random.default_rng(2).uniform(size=(3, image_size, image_size, 3)).astype(np.float32)
    got = encoder_embeddings(params, "mu/8", "cls", image_size, images)
    np.testing.assert_allclose(got, _timm_embed(resized, images), rtol=0, atol=TOLERANCE)


# Bad input: each refused with a message naming what is wrong.


@pytest.fixture
def mu_weights(tmp_path) -> pathlib.Path:
    return _export(_params("mu/8", 32, "cls"), "mu/8", "cls", 32, tmp_path / "mu") / "model.safetensors"


def test_wrong_architecture_names_key_and_shapes(mu_weights):
    with pytest.raises(TimmWeightsError, match=r"patch_embed\.proj\.weight: shape \(32, 3, 8, 8\).*\(32, 3, 16, 16\)"):
        load_timm_weights(mu_weights, _model_config("mu/16", "cls"), 32)
    with pytest.raises(TimmWeightsError, match=r"2 blocks.*'Ti/16' with 12 blocks"):
        load_timm_weights(mu_weights, _model_config("Ti/16", "cls"), 32)
    with pytest.raises(TimmWeightsError, match="has class token but model.pool='mean'"):
        load_timm_weights(mu_weights, _model_config("mu/8", "mean"), 32)


def test_shape_mismatch_names_the_key(mu_weights):
    state = read_state_dict(mu_weights)
    state["blocks.1.mlp.fc1.weight"] = state["blocks.1.mlp.fc1.weight"][:60]
    with pytest.raises(TimmWeightsError, match=r"blocks\.1\.mlp\.fc1\.weight: shape \(60, 32\).*needs \(64, 32\)"):
        from_timm(state, "mu/8", "cls", 32, source="w.safetensors")


def test_declared_heads_must_match(mu_weights):
    config_path = mu_weights.parent / "config.json"
    config_path.write_text(config_path.read_text().replace('"num_heads": 2', '"num_heads": 4'))
    with pytest.raises(TimmWeightsError, match=r"config\.json declares 4 attention heads.*has 2"):
        load_timm_weights(mu_weights, _model_config("mu/8", "cls"), 32)


@pytest.mark.parametrize("extra,message", [
    ({"reg_token": np.zeros((1, 4, 32), np.float32)}, "register tokens"),
    ({"blocks.0.attn.q_norm.weight": np.ones(16, np.float32)}, "normalisation inside attention"),
    ({"fc_norm.weight": np.ones(32, np.float32)}, "fc_norm=True"),
    ({"blocks.0.attn.extra": np.ones(3, np.float32)}, r"Unexpected keys \['blocks.0.attn.extra'\]"),
])
def test_unsupported_features_are_refused(mu_weights, extra, message):
    with pytest.raises(TimmWeightsError, match=message):
        from_timm({**read_state_dict(mu_weights), **extra}, "mu/8", "cls", 32)


def test_missing_key_is_named(mu_weights):
    state = read_state_dict(mu_weights)
    del state["blocks.0.attn.qkv.bias"]
    with pytest.raises(TimmWeightsError, match=r"Missing keys \['blocks.0.attn.qkv.bias'\]"):
        from_timm(state, "mu/8", "cls", 32)


def test_missing_corrupt_and_unknown_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        read_state_dict(tmp_path / "nowhere.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all!")
    with pytest.raises(TimmWeightsError, match="bad.safetensors is not a readable safetensors"):
        read_state_dict(tmp_path / "bad.safetensors")
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(TimmWeightsError, match="unknown weights format '.npz'"):
        read_state_dict(tmp_path / "w.npz")


class _NotATensor:
    """Anything torch.load(weights_only=True) must refuse to rebuild."""


def test_pickles_that_are_not_plain_state_dicts_are_refused(timm, tmp_path):
    import torch

    torch.save({"weight": torch.ones(2), "obj": _NotATensor()}, tmp_path / "object.pth")
    with pytest.raises(TimmWeightsError, match=r"object\.pth is not a plain tensor state dict"):
        read_state_dict(tmp_path / "object.pth")
    torch.save({"model": {"weight": torch.ones(2)}, "epoch": 3}, tmp_path / "nested.pth")
    with pytest.raises(TimmWeightsError, match=r"nested\.pth: entry 'model' is a dict.*checkpoint\['model'\]"):
        read_state_dict(tmp_path / "nested.pth")
    torch.save([torch.ones(2)], tmp_path / "list.bin")
    with pytest.raises(TimmWeightsError, match=r"list\.bin holds a list"):
        read_state_dict(tmp_path / "list.bin")


# Atomic writes.


def test_failed_export_writes_nothing(tmp_path):
    def refuse(staging):
        assert (staging / "model.safetensors").is_file() and (staging / "config.json").is_file()
        raise RuntimeError("parity failed")

    with pytest.raises(RuntimeError, match="parity failed"):
        write_export(tmp_path / "out", {"model.safetensors": {"a": np.ones(3)}}, {}, check=refuse)
    with pytest.raises((TypeError, ValueError)):
        write_export(tmp_path / "out", {"model.safetensors": {"a": np.array(["text"])}}, {})
    assert list(tmp_path.iterdir()) == []


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    write_export(out, {"model.safetensors": {"a": np.ones(3)}}, {"v": 1})
    with pytest.raises(FileExistsError, match="config.overwrite=True"):
        write_export(out, {"model.safetensors": {"a": np.zeros(3)}}, {"v": 2})
    assert read_state_dict(out / "model.safetensors")["a"].tolist() == [1, 1, 1]
    write_export(out, {"model.safetensors": {"a": np.zeros(3)}}, {"v": 2}, overwrite=True)
    assert read_state_dict(out / "model.safetensors")["a"].tolist() == [0, 0, 0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# config.init_from


def test_init_from_path_parsing():
    assert init_from_path("") is None
    assert init_from_path("timm:/w/model.safetensors") == pathlib.Path("/w/model.safetensors")
    for bad in ("hf:org/model", "/w/model.safetensors", "timm:"):
        with pytest.raises(ValueError, match="config.init_from"):
            init_from_path(bad)


def test_apply_init_from_replaces_only_the_encoder(tmp_path):
    from lmc_jax import parallel, train
    from tests.tiny_config import tiny_config

    config = tiny_config()  # mu/8 on 24-px crops: the 32-px weights' positions are resampled
    source = _params("mu/8", 32, "cls", seed=7)
    _export(source, "mu/8", "cls", 32, tmp_path / "w")
    config.init_from = f"timm:{tmp_path / 'w' / 'model.safetensors'}"
    trainer = train.make_trainer(config, parallel.make_mesh(1, 1, devices=jax.devices()[:1]))
    state = train.init_state(trainer)
    new = apply_init_from(config, state, trainer.state_shardings)
    np.testing.assert_array_equal(new["params"]["encoder"]["blocks"][1]["mlp"]["fc1"]["kernel"],
                                  source["blocks"][1]["mlp"]["fc1"]["kernel"])
    assert new["params"]["encoder"]["pos_embed"].shape == state["params"]["encoder"]["pos_embed"].shape
    assert jax.tree.structure(new) == jax.tree.structure(state)
    assert new["params"]["projector"] is state["params"]["projector"]
    config.init_from = ""
    assert apply_init_from(config, state, trainer.state_shardings) is state
