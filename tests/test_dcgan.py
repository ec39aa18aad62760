"""The class-conditional DCGAN (lmc_jax/dcgan.py, lmc_jax/models/dcgan.py) on a trivially separable toy set.

Class 0 = dark red tiles, class 1 = light blue tiles (16 px, width 16, DCGAN's lr 2e-4): one 200-step training
(shared by the tests: ~2 s of steps after ~12 s of compilation) must learn each class's colour; run() is exercised
with a short config of the same architecture, so nothing compiles twice.
"""

import functools
import json

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
import jax.numpy as jnp
from jax import lax
from PIL import Image

from lmc_jax import dcgan
from lmc_jax.errors import DivergedError, UserError
from lmc_jax.models.dcgan import (Discriminator, DownConv, Generator, UpConv, base_and_levels, channels,
                                  num_levels)

TILE = 16
COLOURS = np.array([[120, 20, 20], [170, 200, 240]], np.float32)  # dark red, light blue


def _cfg(**changes) -> ml_collections.ConfigDict:
    values = dict(ratio=0.25, num_steps=200, batch_size=32, latent_dim=16, width=16, learning_rate=2e-4, bank_size=64)
    values.update(changes)
    return ml_collections.ConfigDict(values)


def _toy(n: int = 256, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Tiles of one colour per class, with per-tile brightness and per-pixel noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    tiles = (COLOURS[labels][:, None, None, :] + rng.normal(0, 12, (n, 1, 1, 3))
             + rng.normal(0, 10, (n, TILE, TILE, 3)))
    return np.clip(tiles, 0, 255).astype(np.uint8), labels


@pytest.fixture(scope="module")
def trained():
    images, labels = _toy()
    generator, history = dcgan.train(images, labels, num_classes=2, cfg=_cfg(), seed=0)
    return images, labels, generator, history


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert message and "\n" not in message
    return message


def test_losses_move_and_stay_finite(trained):
    *_, history = trained
    assert set(history) == {"d_loss", "g_loss", "d_real", "d_fake", "mode_seeking"}
    assert all(v.shape == (200,) and np.all(np.isfinite(v)) for v in history.values())
    # both start near the no-information values (D ≈ ½ everywhere: L_D ≈ 2 log 2, L_G ≈ log 2) and leave them
    assert abs(history["d_loss"][0] - 2 * np.log(2)) < 0.2 and abs(history["g_loss"][0] - np.log(2)) < 0.2
    assert abs(history["d_loss"][-50:].mean() - history["d_loss"][:5].mean()) > 0.2
    assert abs(history["g_loss"][-50:].mean() - history["g_loss"][:5].mean()) > 0.2
    assert np.all((history["d_real"] > 0) & (history["d_real"] < 1))


def test_samples_follow_their_class_colour(trained):
    images, labels, generator, _ = trained
    fake_labels = np.repeat([0, 1], 32)
    fake = dcgan.sample(generator, jax.random.key(1), fake_labels)
    assert fake.dtype == np.uint8 and fake.shape == (64, TILE, TILE, 3)
    assert fake.reshape(64, -1).std(axis=1).min() > 0  # not blank tiles
    real_means = np.stack([images[labels == c].reshape(-1, 3).mean(0) for c in (0, 1)])
    for c in (0, 1):
        mean = fake[fake_labels == c].reshape(-1, 3).astype(np.float64).mean(0)
        distances = np.linalg.norm(real_means - mean, axis=1)
        assert distances[c] < distances[1 - c] / 2, (c, mean, real_means)


def test_samples_of_one_class_differ(trained):
    """z is used: per-tile mean colours spread within a class (real tiles: ~11 per channel; the plain DCGAN
    objective, MODE_SEEKING_WEIGHT = 0, gives ~0.5 here after 200 steps: one colour per class)."""
    *_, generator, _ = trained
    fake = dcgan.sample(generator, jax.random.key(5), np.zeros(64, int))
    spread = fake.reshape(64, -1, 3).astype(np.float64).mean(axis=1).std(axis=0)
    assert spread.mean() > 3.0, spread


def test_mode_seeking_term():
    a, b = jnp.zeros((2, 4, 4, 3)), jnp.ones((2, 4, 4, 3))
    z1, z2 = jnp.zeros((2, 8)), jnp.full((2, 8), 2.0)
    assert float(dcgan.mode_seeking(a, a, z1, z2)) == pytest.approx(1e5)  # one image for two latents: large
    assert float(dcgan.mode_seeking(a, b, z1, z2)) == pytest.approx(2.0, rel=1e-4)  # 1 / (1 / 2)


def test_sample_mode_does_not_depend_on_the_batch(trained):
    """Sample mode uses BatchNorm's running averages: an image does not change with what is sampled beside it."""
    *_, generator, _ = trained
    key = jax.random.key(3)
    together = dcgan.sample(generator, key, np.array([1, 0, 0, 0, 1]))
    assert np.array_equal(dcgan.sample(generator, key, np.array([1]))[0], together[0])


def test_bank_is_balanced(trained):
    *_, generator, _ = trained
    images, bank_labels = dcgan.bank(generator, jax.random.key(2), 7, 2)
    assert images.shape == (7, TILE, TILE, 3) and images.dtype == np.uint8
    assert bank_labels.dtype == np.int64 and np.bincount(bank_labels).tolist() == [4, 3]
    with pytest.raises(UserError):
        dcgan.bank(generator, jax.random.key(2), 8, 3)


def test_write_grid_size_and_content(tmp_path, trained):
    images, labels, generator, _ = trained
    fake = dcgan.sample(generator, jax.random.key(4), np.array([0, 1, 1]))
    path = dcgan.write_grid(tmp_path / "grid.png", fake, np.array([0, 1, 1]), images, labels, per_class=4)
    grid = np.asarray(Image.open(path).convert("RGB"))
    assert (grid.shape[1], grid.shape[0]) == dcgan.grid_size(TILE, 2, 4, with_real=True)
    scale = 64 // TILE
    cell = TILE * scale + 2
    # row 2 = class 1 fakes; its first cell holds fake[1] upscaled
    top, left = 2 + 2 * cell, 64
    assert np.array_equal(grid[top:top + TILE * scale:scale, left:left + TILE * scale:scale], fake[1])
    # row 1 = class 0 real tiles: its first cell holds the first real tile of class 0
    assert np.array_equal(grid[2 + cell:2 + cell + TILE * scale:scale, left:left + TILE * scale:scale],
                          images[labels == 0][0])
    alone = dcgan.write_grid(tmp_path / "fake.png", fake, np.array([0, 1, 1]), per_class=4)
    assert Image.open(alone).size == dcgan.grid_size(TILE, 2, 4, with_real=False)


def test_run_writes_reuses_and_refuses(tmp_path, monkeypatch):
    images, labels = _toy(128, seed=1)
    cfg = _cfg(num_steps=20, bank_size=10)
    path = dcgan.run(cfg, images, labels, 2, tmp_path, seed=0)
    folder = tmp_path / "dcgan"
    assert path == folder / "bank.npz" and (folder / "samples.png").exists()
    bank_images, bank_labels = dcgan.load_bank(path)
    assert bank_images.shape == (10, TILE, TILE, 3) and np.bincount(bank_labels).tolist() == [5, 5]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["steps"] == 20 and len(summary["history"]["d_loss"]) == 20
    assert np.isfinite(summary["distance"]["fd"]) and "raw-pixel" in summary["distance"]["features"]
    assert set(summary["last_50"]) == set(dcgan.METRICS)
    assert not list(folder.glob("*.tmp"))

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the bank matches")

    monkeypatch.setattr(dcgan, "train", no_training)
    # a whole config is accepted too; how the bank is used (ratio, bank_path) does not make another bank
    full = ml_collections.ConfigDict({"dcgan": _cfg(num_steps=20, bank_size=10, ratio=0.5, bank_path=str(path))})
    assert dcgan.run(full, images, labels, 2, tmp_path, seed=0) == path
    with pytest.raises(UserError) as error:
        dcgan.run(_cfg(num_steps=21, bank_size=10), images, labels, 2, tmp_path, seed=0)
    assert "cfg.num_steps" in _one_line(error) and "delete" in str(error.value)
    with pytest.raises(UserError) as error:
        dcgan.run(cfg, images[::-1].copy(), labels[::-1].copy(), 2, tmp_path, seed=0)
    assert "different data" in _one_line(error)


def test_sample_distance(trained):
    images, labels, *_ = trained
    same = dcgan.sample_distance(dcgan.pixel_features, images[labels == 0], images[labels == 0])
    apart = dcgan.sample_distance(dcgan.pixel_features, images[labels == 0], images[labels == 1])
    assert abs(same) < 1e-6 and apart > 100


def test_non_finite_loss_names_the_step():
    images, labels = _toy(64)
    with pytest.raises(DivergedError) as error:
        dcgan.train(images, labels, num_classes=2, cfg=_cfg(num_steps=30, learning_rate=1e30), seed=0)
    assert "step" in _one_line(error) and "learning_rate" in str(error.value)


@pytest.mark.parametrize("images, labels, num_classes, expected", [
    (np.zeros((4, 16, 16, 3), np.float32), np.zeros(4, int), 1, "dtype"),
    (np.zeros((4, 16, 16), np.uint8), np.zeros(4, int), 1, "shape"),
    (np.zeros((4, 36, 36, 3), np.uint8), np.zeros(4, int), 1, "b·2^n"),
    (np.zeros((4, 16, 16, 3), np.uint8), np.array([0, 1, 2, -1]), 3, "outside"),
    (np.zeros((4, 16, 16, 3), np.uint8), np.zeros(3, int), 1, "one integer label"),
    (np.zeros((4, 16, 16, 3), np.uint8), np.zeros(4, int), 2, "no training tiles"),
])
def test_bad_inputs_raise_one_line(images, labels, num_classes, expected):
    with pytest.raises(ValueError) as error:
        dcgan.train(images, labels, num_classes=num_classes, cfg=_cfg(), seed=0)
    assert expected in _one_line(error)


def test_bad_config_raises_one_line():
    for batch_size in (0, 1):
        with pytest.raises(UserError) as error:
            dcgan.dcgan_config(_cfg(batch_size=batch_size))
        assert "dcgan.batch_size" in _one_line(error)
    cfg = _cfg()
    del cfg["bank_size"]
    with pytest.raises(UserError) as error:
        dcgan.dcgan_config(cfg)
    assert "bank_size" in _one_line(error)


def test_sizes():
    assert [num_levels(s) for s in (8, 16, 32, 64)] == [1, 2, 3, 4]
    assert [base_and_levels(s) for s in (12, 48, 96, 224, 56)] == [(3, 2), (3, 4), (3, 5), (7, 5), (7, 3)]
    assert channels(64, 32) == [256, 128, 64, 32]
    for bad in (4, 7, 36, 100):  # no halving at all, or a base of 9 / 25
        with pytest.raises(ValueError):
            num_levels(bad)
    for size in (24, 48):  # a 3-px first map: generator and discriminator fit the size
        g = Generator(2, size, latent_dim=8, width=4, rngs=nnx.Rngs(0))
        d = Discriminator(2, size, width=4, rngs=nnx.Rngs(1))
        images = g(jnp.zeros((2, 8)), jnp.array([0, 1]), train=True)
        assert images.shape == (2, size, size, 3) and d(images, jnp.array([0, 1]), train=True).shape == (2,)


def test_strided_convs_are_the_dcgan_convolutions():
    """DownConv = a 4×4 stride-2 conv with padding 1; UpConv = a 4×4 stride-2 transposed conv (scatter definition:
    every input pixel adds kernel × value to a 4×4 output patch), its output starting 2 pixels into the full one."""
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 5)).astype(np.float32)

    @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})  # one quick compilation
    def apply(x):
        down, up = DownConv(5, 7, use_bias=False, rngs=nnx.Rngs(0)), UpConv(5, 7, use_bias=False, rngs=nnx.Rngs(1))
        kernel = down.kernel[...].reshape(2, 2, 2, 2, 5, 7).transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 5, 7)
        expected = lax.conv_general_dilated(x, kernel, (2, 2), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return down(x), expected, up(x), up.kernel[...]

    down_out, expected, up_out, up_kernel = jax.device_get(apply(x))
    np.testing.assert_allclose(down_out, expected, atol=1e-5)
    phases = up_kernel.reshape(2, 2, 5, 2, 2, 7)  # window row, column, cin, phase row, column, cout
    kernel4 = np.zeros((4, 4, 5, 7))
    for r, c, a, b in np.ndindex(2, 2, 2, 2):
        kernel4[a + 2 - 2 * r, b + 2 - 2 * c] = phases[r, c, :, a, b]
    full = np.zeros((2, 18, 18, 7))
    for i, j in np.ndindex(8, 8):
        full[:, 2 * i:2 * i + 4, 2 * j:2 * j + 4] += np.einsum("nc,tscd->ntsd", x[:, i, j], kernel4)
    np.testing.assert_allclose(up_out, full[:, 2:18, 2:18], atol=1e-5)
