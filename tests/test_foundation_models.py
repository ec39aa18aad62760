"""Pathology foundation models (export.timm.FOUNDATION_MODELS): randomly initialised timm models of each published
architecture, reduced to 2 blocks of width 96 with every structural feature kept (register tokens, SwiGLUPacked,
patch 14, layer scale, mlp_ratio, no_embed_class, input normalisation), import into our ViT and export back to
timm with features equal to timm's (≤ 1e-4, float32) under each embedding convention; hf-hub: from a local cache;
bad input refused by name; the encoder frozen for the first steps of fine-tuning."""

import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from lmc_jax.errors import UserError
from lmc_jax.export.load import init_from_path, load_timm_weights, model_keys_from_weights, read_state_dict
from lmc_jax.export.parity import encoder_embeddings, export_max_abs_diff, pool_timm_tokens, timm_embeddings
from lmc_jax.export.timm import FOUNDATION_MODELS, TimmWeightsError, from_timm, hub_config, timm_spec, to_timm
from lmc_jax.export.write import write_export
from lmc_jax.models.vit import arch_kwargs, mlp_hidden, parse_variant
from lmc_jax.optim import make_optimizer

TOLERANCE = 1e-4  # max abs, float32 (the bar)
GRID = 3  # patches per side: 42-px images at patch 14
SMALL = dict(embed_dim=96, depth=2, num_heads=4)  # int(96 · ratio) is even for every published ratio


def _resolve(args: dict) -> dict:
    """Published args with their class names ("timm.layers.SwiGLUPacked", "torch.nn.SiLU") made classes."""
    import timm.layers
    import torch

    classes = {"timm.layers.SwiGLUPacked": timm.layers.SwiGLUPacked, "timm.layers.SwiGLU": timm.layers.SwiGLU,
               "torch.nn.SiLU": torch.nn.SiLU}
    return {key: classes.get(value, value) if isinstance(value, str) else value for key, value in args.items()}


def _config(model: dict, width: int = SMALL["embed_dim"]) -> ml_collections.ConfigDict:
    """config.model of `model` (FOUNDATION_MODELS keys) at the reduced size."""
    patch = parse_variant(model["variant"])[1]
    return ml_collections.ConfigDict(dict(dtype="float32", projector_dims=(8,), **dict(
        model, variant=f"{width}x{SMALL['depth']}x{SMALL['num_heads']}/{patch}")))


def _randomise(model, seed: int):
    """Every parameter moved off its init (± N(0, 0.05)); layer scales near 1 so that each branch counts."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith(".gamma"):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.add_(0.05 * noise)
    return model.eval()


def _small_timm(timm, name: str, **overrides):
    """The published architecture of `name` at the reduced size (timm.create_model(name, pretrained=False, …))."""
    entry = FOUNDATION_MODELS[name]
    patch = parse_variant(entry.model["variant"])[1]
    args = _resolve(dict(entry.timm_args, **SMALL, img_size=GRID * patch, **overrides))
    return _randomise(timm.create_model(entry.timm_name, pretrained=False, **args), seed=len(name))


def _save(model, directory: pathlib.Path, config: ml_collections.ConfigDict, architecture: str) -> pathlib.Path:
    """The timm weights and a hub config.json declaring the model's input normalisation."""
    import safetensors.torch

    directory.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(model.state_dict(), directory / "model.safetensors")
    (directory / "config.json").write_text(json.dumps({
        "architecture": architecture, "model_args": {"num_heads": SMALL["num_heads"]},
        "pretrained_cfg": {"mean": list(arch_kwargs(config)["image_mean"]),
                           "std": list(arch_kwargs(config)["image_std"])}}))
    return directory / "model.safetensors"


def _images(size: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(size=(3, size, size, 3)).astype(np.float32)


POOLS = ("cls", "patch_mean", "cls_patch_mean")  # the conventions of a model with a class token
# H-optimus-1 is H-optimus-0's architecture (same builder, arguments and normalisation): tested once.
ARCHITECTURES = sorted(name for name in FOUNDATION_MODELS if name != "h-optimus-1")


def _ours(params: dict, config: ml_collections.ConfigDict, size: int, images: np.ndarray,
          pools: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Our encoder's embeddings of `images` under each of `pools` (one compilation: the pools share the tokens)."""
    from flax import nnx

    from lmc_jax.models.vit import ViT

    arch = arch_kwargs(config)
    graphs = {pool: nnx.split(nnx.eval_shape(lambda p=pool: ViT(config.variant, size, pool=p, rngs=nnx.Rngs(0),
                                                                **arch)), nnx.Param)[0] for pool in pools}

    def embed(params, x):
        models = {pool: nnx.merge(graph, params) for pool, graph in graphs.items()}
        tokens = models[pools[0]].tokens(x)
        return {pool: model.pool_tokens(tokens) for pool, model in models.items()}

    return {pool: np.asarray(value) for pool, value in jax.jit(embed)(params, images).items()}


def test_h_optimus_1_is_h_optimus_0s_architecture():
    zero, one = FOUNDATION_MODELS["h-optimus-0"], FOUNDATION_MODELS["h-optimus-1"]
    assert (zero.timm_name, zero.timm_args, zero.model, zero.embedding) == (
        one.timm_name, one.timm_args, one.model, one.embedding)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_published_architecture_imports_and_exports_with_timm_parity(timm, tmp_path, name):
    """Import (timm → ours) and export (ours → timm local-dir, strict) agree with timm under every convention."""
    import torch

    entry = FOUNDATION_MODELS[name]
    model = _small_timm(timm, name)
    config = _config(entry.model)
    arch = arch_kwargs(config)
    size = GRID * parse_variant(config.variant)[1]
    images = _images(size)
    weights = _save(model, tmp_path / "w", config, entry.timm_name)
    params = load_timm_weights(weights, config, size)
    ours = _ours(params, config, size, images, POOLS)
    x = (images - np.asarray(arch["image_mean"], np.float32)) / np.asarray(arch["image_std"], np.float32)
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    for pool in POOLS:  # registers never enter the patch mean
        want = pool_timm_tokens(tokens, pool, model.num_prefix_tokens)
        np.testing.assert_allclose(ours[pool], want, rtol=0, atol=TOLERANCE, err_msg=pool)
    documented = timm_embeddings(model, images, arch["image_mean"], arch["image_std"], entry.embedding)
    width = SMALL["embed_dim"] * (2 if entry.embedding == "cls_patch_mean" else 1)
    assert documented.shape == (3, width) and np.abs(documented).max() > 0.1
    np.testing.assert_allclose(ours[entry.embedding], documented, rtol=0, atol=TOLERANCE)
    read = model_keys_from_weights(read_state_dict(weights), json.loads((weights.parent / "config.json").read_text()))
    size_of = parse_variant(config.variant)[0]
    want = dict(arch, variant=config.variant)  # what config.model keys the weights and config.json give
    for key in ("variant", "reg_tokens", "no_embed_class", "mlp", "image_mean", "image_std"):
        assert read[key] == want[key], key
    assert mlp_hidden(size_of, read["mlp"], read["mlp_ratio"]) == mlp_hidden(size_of, arch["mlp"], arch["mlp_ratio"])
    assert (read["init_values"] > 0) == (arch["init_values"] > 0) and read["pool"] == "cls"
    exported = to_timm(params)  # round trip of the weights: exact, key for key
    assert sorted(exported) == sorted(k for k in model.state_dict() if not k.startswith("head."))
    for key, value in model.state_dict().items():
        np.testing.assert_array_equal(exported[key], value.numpy(), err_msg=key)
    for pool in POOLS if name == "virchow2" else (entry.embedding,):  # every convention's export once
        directory = tmp_path / f"export-{pool}"
        write_export(directory, {"model.safetensors": exported},
                     hub_config(timm_spec(config.variant, pool, size, **arch), {}))
        assert export_max_abs_diff(directory, ours[pool], images) <= TOLERANCE, pool  # local-dir loads strictly


def test_split_swiglu_and_mean_pool_with_registers(timm, tmp_path):
    """timm SwiGLU (fc1_g / fc1_x, hidden int(width · ratio) per branch) ⇔ our "swiglu", exported packed; timm
    class_token=False, reg_tokens=4, global_pool='avg', fc_norm=False ⇔ our pool='mean' with registers."""
    model = _small_timm(timm, "h-optimus-0", mlp_layer=timm.layers.SwiGLU, mlp_ratio=2.66667, class_token=False,
                        global_pool="avg", fc_norm=False)
    assert "blocks.0.mlp.fc1_g.weight" in model.state_dict()
    config = _config(dict(FOUNDATION_MODELS["h-optimus-0"].model, mlp="swiglu", mlp_ratio=2.66667, pool="mean"))
    arch = arch_kwargs(config)
    images = _images(42)
    params = load_timm_weights(_save(model, tmp_path / "w", config, "vit_giant_patch14_reg4_dinov2"), config, 42)
    assert "cls_token" not in params and params["reg_token"].shape == (1, 4, 96)
    assert params["blocks"][0]["mlp"]["fc1"]["kernel"].shape == (96, 2 * 256)
    ours = encoder_embeddings(params, config.variant, "mean", 42, images, **arch)
    np.testing.assert_allclose(ours, timm_embeddings(model, images, arch["image_mean"], arch["image_std"]),
                               rtol=0, atol=TOLERANCE)
    write_export(tmp_path / "export", {"model.safetensors": to_timm(params)},
                 hub_config(timm_spec(config.variant, "mean", 42, **arch), {}))
    assert export_max_abs_diff(tmp_path / "export", ours, images) <= TOLERANCE


@pytest.fixture(scope="module")
def virchow2_weights(timm, tmp_path_factory) -> dict:
    """The reduced Virchow2's state dict (4 registers with positions, SwiGLUPacked, layer scale)."""
    directory = tmp_path_factory.mktemp("virchow2")
    return read_state_dict(_save(_small_timm(timm, "virchow2"), directory, _config(FOUNDATION_MODELS["virchow2"].model),
                                 "vit_huge_patch14_224"))


@pytest.mark.parametrize("change,message", [
    (dict(reg_tokens=0), r"holds 4 register tokens \(timm reg_tokens\) but model.reg_tokens=0; set model.reg_tokens=4"),
    (dict(mlp="gelu", mlp_ratio=0.0), r"a gated MLP, but model.mlp='gelu'; set model.mlp='swiglu_packed'"),
    (dict(mlp_ratio=4.0), r"blocks.0.mlp.fc1.weight: shape \(512, 96\).*needs \(384, 96\); set model.mlp_ratio"),
    (dict(no_embed_class=True), r"pos_embed has 14 positions; its positions cover the prefix tokens.*"
                                r"set model.no_embed_class=False"),
    (dict(init_values=0.0, pool="mean"), r"has class token but model.pool='mean'"),
])
def test_mismatched_config_is_refused_naming_the_key(virchow2_weights, change, message):
    model = dict(FOUNDATION_MODELS["virchow2"].model, **change)
    config = _config(model)
    with pytest.raises(TimmWeightsError, match=message):
        from_timm(virchow2_weights, config.variant, config.pool, 42, source="w.safetensors",
                  **{key: arch_kwargs(config)[key] for key in ("reg_tokens", "mlp", "mlp_ratio", "init_values",
                                                                "no_embed_class")})


def test_transformers_layout_is_refused_by_name():
    """Phikon-v2 is a Hugging Face transformers Dinov2Model, not a timm checkpoint."""
    state = {"embeddings.cls_token": np.zeros((1, 1, 8), np.float32),
             "encoder.layer.0.attention.attention.query.weight": np.zeros((8, 8), np.float32)}
    with pytest.raises(TimmWeightsError, match=r"Hugging Face transformers layout.*Phikon-v2"):
        from_timm(state, "mu/8", "cls", 32)


def _hf_cache(root: pathlib.Path, repo: str, files: dict[str, bytes]) -> None:
    """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<rev>/…}."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    (folder / "snapshots" / revision).mkdir(parents=True)
    for name, data in files.items():
        (folder / "snapshots" / revision / name).write_bytes(data)


def test_hf_hub_init_from_reads_the_local_cache_only(timm, tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    entry = FOUNDATION_MODELS["h0-mini"]
    model = _small_timm(timm, "h0-mini")
    config = _config(entry.model)
    weights = _save(model, tmp_path / "source", config, entry.timm_name)
    _hf_cache(tmp_path / "hub", "bioptimus/H0-mini", {"model.safetensors": weights.read_bytes(),
                                                      "config.json": (weights.parent / "config.json").read_bytes()})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = init_from_path("hf-hub:bioptimus/H0-mini")
    assert path.name == "model.safetensors" and "models--bioptimus--H0-mini" in str(path)
    params = load_timm_weights(path, config, 42)
    np.testing.assert_array_equal(params["reg_token"], model.state_dict()["reg_token"].numpy())
    # model.image_mean/std are H-optimus's, as config.json declares: applied by the model, nothing folded
    np.testing.assert_array_equal(params["patch_embed"]["kernel"],
                                  model.state_dict()["patch_embed.proj.weight"].numpy().transpose(2, 3, 1, 0))
    with pytest.raises(TimmWeightsError, match=r"org/absent is not in the local Hugging Face cache .*hf download "
                                               r"org/absent.*models--org--absent"):
        init_from_path("hf-hub:org/absent")
    with pytest.raises(ValueError, match="hf-hub:org/name"):
        init_from_path("hf-hub:no-slash")


def _freeze_config(steps: int) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(num_steps=6, optimizer=dict(
        learning_rate=1e-2, warmup_steps=1, weight_decay=0.05, b1=0.9, b2=0.999, grad_clip_norm=1.0,
        freeze_encoder_steps=steps)))


def test_encoder_frozen_for_the_first_steps_then_trained():
    params = {"encoder": {"w": jnp.ones((3, 3)), "b": jnp.zeros(3)}, "projector": {"w": jnp.ones((3, 2))}}
    tx, _ = make_optimizer(_freeze_config(2))
    state = tx.init(params)

    @jax.jit
    def step(params, state, scale):
        updates, state = tx.update(jax.tree.map(lambda p: jnp.full_like(p, scale), params), state, params)
        return jax.tree.map(lambda p, u: p + u, params, updates), state

    history = []
    for count in range(4):
        params, state = step(params, state, 0.1 * (count + 1))
        history.append(params)
    for frozen in history[:3]:  # frozen for 2 steps; its own warm-up then starts at learning rate 0
        for got, want in zip(jax.tree.leaves(frozen["encoder"]), (jnp.zeros(3), jnp.ones((3, 3))), strict=True):
            np.testing.assert_array_equal(got, want)
    assert not np.array_equal(history[1]["projector"]["w"], np.ones((3, 2)))  # the projector trains at once
    assert not np.array_equal(history[3]["encoder"]["w"], np.ones((3, 3)))  # the encoder after its freeze
    with pytest.raises(UserError, match="freeze_encoder_steps=6: must be below num_steps=6"):
        make_optimizer(_freeze_config(6))
