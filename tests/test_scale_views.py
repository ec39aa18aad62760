"""Tests for lmc_jax/stain/scale.py and its place in augment.make_views: the resampling maths (zoom of a
ramp, anti-aliasing of a checkerboard, centre preservation), determinism, key-stream independence and
bit-identity with the pre-scale make_views when scale is None."""

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from lmc_jax.stain import augment
from lmc_jax.stain import scale as S

REPO = Path(__file__).resolve().parents[1]
PRE_SCALE_COMMIT = "f2ad9c57734bd8730424afc7bd71e753506d6849"
"""The last commit whose augment.py has no scale views: the reference for scale=None (when views change on
purpose later, compare against that commit instead, or drop the test)."""
ON = S.ScaleAugConfig(max_zoom=2.0, max_downsample=4.0, blur_sigma=1.0)


STAIN = augment.StainAugConfig()
# every make_views call here shares one shape (8 tiles of 16 px, crop 12, K=2): three compiles in all


def _tiles(seed: int, batch: int = 8, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def _views(key: int, tiles, scale, make_views=augment.make_views, stain=STAIN) -> np.ndarray:
    return np.asarray(make_views(jax.random.key(key), jnp.asarray(tiles), num_views=2, crop_size=12, stain=stain,
                                 **({} if scale is False else {"scale": scale})))


_scale_many = jax.jit(jax.vmap(S.scale_view, in_axes=(0, 0, None)), static_argnums=2)  # views [N, C, C, 3]
_draws = jax.jit(jax.vmap(lambda key: S.sample_scale(key, ON)))  # (modes, factors) of keys [N]


_matrix = jax.jit(S.resample_matrix, static_argnums=0)  # one compile per size; zoom, factor, sigma traced


def _zoom(size: int, zoom: float) -> np.ndarray:
    return np.asarray(_matrix(size, zoom, 1.0, 0.0))


def _down(size: int, factor: float, sigma: float = 0.0) -> np.ndarray:
    return np.asarray(_matrix(size, 1.0, factor, sigma))


def _apply(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """The separable map of scale.apply_separable, in float64 numpy: out = M @ image @ M.T per channel."""
    return np.einsum("ij,jkc,lk->ilc", matrix.astype(np.float64), image, matrix.astype(np.float64))


def _grey(plane: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(plane, np.float32)[..., None], 3, axis=-1)


def test_from_config_strips_the_switch_and_validates():
    cd = default_config.get_config().lmc.scale
    cfg = S.ScaleAugConfig.from_config(cd)
    assert cfg == S.ScaleAugConfig(max_zoom=cd.max_zoom, max_downsample=cd.max_downsample, blur_sigma=cd.blur_sigma)
    hash(cfg)  # static argument of the jitted make_views
    with pytest.raises(ValueError, match="unknown key"):
        S.ScaleAugConfig.from_config({"views": True, "max_zom": 2.0})
    for bad in ({"max_zoom": 0.5}, {"max_downsample": float("nan")}, {"blur_sigma": -1.0}, {"identity_prob": 1.5}):
        with pytest.raises(ValueError, match="out of range"):
            S.ScaleAugConfig(**bad)


def _pre_scale_augment():
    """augment.py as it was before the scale views, imported from git under another module name."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git history to load the pre-scale augment.py")
    source = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PRE_SCALE_COMMIT}:lmc_jax/stain/augment.py"],
        capture_output=True, text=True, check=False,
    )
    if source.returncode != 0:
        pytest.skip(f"commit {PRE_SCALE_COMMIT} not in this clone: {source.stderr.strip()}")
    spec = importlib.util.spec_from_loader("_augment_pre_scale", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source.stdout, "augment@pre-scale", "exec"), module.__dict__)
    sys.modules.setdefault("_augment_pre_scale", module)
    return module


def test_scale_none_is_bit_identical_to_the_pre_scale_make_views():
    old = _pre_scale_augment()
    tiles = _tiles(0)
    new = _views(5, tiles, None)
    ref = _views(5, tiles, False, make_views=old.make_views, stain=old.StainAugConfig())
    assert new.tobytes() == ref.tobytes()


def test_same_key_same_views_other_key_other_views_all_in_range():
    tiles = _tiles(1)
    first, again, other = (_views(k, tiles, ON) for k in (3, 3, 4))
    assert first.tobytes() == again.tobytes()
    assert not np.allclose(first, other)
    assert first.shape == (2, 8, 12, 12, 3) and first.dtype == np.float32
    assert np.all(np.isfinite(first)) and first.min() >= 0.0 and first.max() <= 1.0


def test_scale_draws_do_not_touch_the_stain_draws():
    """Views whose scale draw is the identity equal the scale=None views bit for bit (stain on); the rest differ."""
    tiles = _tiles(2)
    plain, scaled = _views(7, tiles, None), _views(7, tiles, ON)
    root = jax.random.key(7)
    keys = jnp.stack([jax.random.fold_in(jax.random.fold_in(root, v), i) for v in range(2) for i in range(8)])
    modes = np.asarray(_draws(jnp.concatenate([keys, jax.random.split(root, 32)]))[0][:16]).reshape(2, 8)
    identity = modes == S.IDENTITY
    assert identity.any() and (~identity).any()
    assert np.array_equal(plain[identity], scaled[identity])
    changed = np.abs(plain - scaled).max(axis=(2, 3, 4)) > 1e-3
    assert np.array_equal(changed, ~identity)


def _random_views(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, scale_view outputs) for 48 random views of 12 px with hard 0/1 edges (where ringing would overshoot)."""
    images = np.random.default_rng(seed).random((48, 12, 12, 3), dtype=np.float32)
    images[:, ::2] = np.round(images[:, ::2])
    return images, np.asarray(_scale_many(jax.random.split(jax.random.key(seed), 48), jnp.asarray(images), ON))


def test_scale_views_stay_in_unit_range_and_only_identity_draws_pass_unchanged():
    images, out = _random_views(4)
    assert np.all(np.isfinite(out)) and out.min() >= 0.0 and out.max() <= 1.0
    modes = np.asarray(_draws(jax.random.split(jax.random.key(4), 48))[0])
    unchanged = np.all(out == images, axis=(1, 2, 3))
    assert np.array_equal(unchanged, modes == S.IDENTITY) and 0 < unchanged.sum() < 48


@pytest.mark.parametrize("size", [12, 31])
def test_matrices_are_stochastic_mirror_symmetric_and_exact_at_factor_one(size):
    for factor in (1.3, 2.0, 3.7):
        for m in (_zoom(size, factor), _down(size, factor, 0.8)):
            assert m.min() >= 0.0
            np.testing.assert_allclose(m.sum(axis=1), 1.0, atol=1e-5)
            np.testing.assert_allclose(m, m[::-1, ::-1], atol=1e-6)
    assert np.array_equal(_zoom(size, 1.0), np.eye(size)) and np.array_equal(_down(size, 1.0), np.eye(size))


def test_zoom_of_a_ramp_divides_its_slope_and_keeps_the_centre_value():
    size = 31
    ramp = _grey(np.tile(np.arange(size) * 0.02 + 0.1, (size, 1)))  # value 0.1 + 0.02 j in column j
    for zoom in (2.0, 1.6):
        out = _apply(ramp, _zoom(size, zoom))[..., 0]
        np.testing.assert_allclose(np.diff(out, axis=1), 0.02 / zoom, atol=1e-6)
        np.testing.assert_allclose(out[:, 15], ramp[0, 15, 0], atol=1e-6)  # the centre column keeps its value
        np.testing.assert_allclose(out, np.broadcast_to(out[:1], out.shape), atol=1e-6)  # still one-dimensional


def test_downsampling_reproduces_a_ramp_away_from_the_edges():
    """Tent pre-filter, PSF and bilinear up-sampling are symmetric and linear-exact: a ramp survives inside.

    At an integer factor exactly; at a non-integer one the tent sampled on the pixel grid is slightly
    lopsided, a sub-pixel shift bounded here by 0.05 px."""
    size = 31
    ramp = _grey(np.tile(np.arange(size) * 0.02 + 0.1, (size, 1)))
    inner = slice(9, size - 9)
    for factor, sigma, shift_px in ((4.0, 1.0, 1e-3), (3.0, 0.0, 1e-3), (2.7, 0.6, 0.05)):
        out = _apply(ramp, _down(size, factor, sigma))[..., 0]
        np.testing.assert_allclose(out[:, inner], ramp[:, inner, 0], atol=0.02 * shift_px)
        np.testing.assert_allclose(out[:, 15], ramp[0, 15, 0], atol=1e-6)  # the centre column is never shifted


def test_downsampling_antialiases_a_checkerboard_to_its_mean_grey():
    size = 31
    board = _grey(np.indices((size, size)).sum(axis=0) % 2)
    naive = board[2::4, 2::4, 0]  # striding: every sample lands on a white square
    assert np.ptp(naive) == 0 and abs(naive.mean() - 0.5) == 0.5  # the aliasing the pre-filter must prevent
    for factor, tolerance in ((4.0, 0.005), (3.3, 0.06), (2.5, 0.06)):  # 4: only the clipped edge rows miss 0.5
        out = _apply(board, _down(size, factor))
        assert np.abs(out - 0.5).max() < tolerance, factor


def test_a_bright_centre_dot_stays_brightest_at_the_centre():
    """The centre pixel is the maximum (a coarse grid with an even pixel count leaves a flat top of width ~d
    around it, so ties within rounding count) and the light's centroid stays exactly at the centre."""
    size = 31
    dot = np.zeros((size, size), np.float32)
    dot[15, 15] = 1.0
    grid = np.arange(size)
    for matrix, half_width in ((_zoom(size, 1.7), 0), (_zoom(size, 2.0), 0),
                               (_down(size, 2.6, 0.5), 1.3), (_down(size, 4.0, 1.0), 2)):
        out = _apply(_grey(dot), matrix)[..., 0]
        top = np.argwhere(out >= out.max() - 1e-6)
        assert [15, 15] in top.tolist()
        assert np.abs(top - 15).max() <= half_width
        total = out.sum()
        np.testing.assert_allclose([(out.sum(1) * grid).sum() / total, (out.sum(0) * grid).sum() / total], 15, atol=1e-4)


def test_random_scale_views_keep_a_centred_dot_at_the_centre():
    """Even view, random draws: the 2x2 centre block stays the brightest region, symmetric in, symmetric out."""
    size, count = 12, 48  # the shape of _random_views: one compile
    dots = np.full((count, size, size, 3), 0.1, np.float32)
    dots[:, 5:7, 5:7] = 1.0
    out = np.asarray(_scale_many(jax.random.split(jax.random.key(11), count), jnp.asarray(dots), ON))
    assert (np.abs(out - dots).max(axis=(1, 2, 3)) > 1e-3).sum() >= count // 2  # most views were rescaled
    rows, cols = np.divmod(out[..., 0].reshape(count, -1).argmax(axis=-1), size)
    assert np.all((rows >= 5) & (rows <= 6) & (cols >= 5) & (cols <= 6))
    np.testing.assert_allclose(out, out[:, ::-1, ::-1], atol=1e-5)


def test_draws_follow_the_documented_distribution():
    batches = [map(np.asarray, _draws(jax.random.split(jax.random.key(100 + i), 48))) for i in range(60)]
    modes, factors = (np.concatenate(parts) for parts in zip(*batches))  # 2880 draws, in calls of 48: one compile
    share = np.bincount(modes, minlength=3) / len(modes)
    np.testing.assert_allclose(share, 1 / 3, atol=0.04)
    assert np.all(factors[modes == S.IDENTITY] == 1.0)
    for mode, top in ((S.ZOOM, ON.max_zoom), (S.DOWNSAMPLE, ON.max_downsample)):
        f = factors[modes == mode]
        assert f.min() >= 1.0 and f.max() <= top
        np.testing.assert_allclose(np.mean(np.log(f) / np.log(top)), 0.5, atol=0.04)  # log-uniform: mean at √top


def test_each_view_gets_the_matrix_of_its_draw_with_blur_growing_with_the_downsampling():
    """scale_view == M(draw) @ view @ M(draw).T, with the PSF sigma blur_sigma * (d - 1) / (max_downsample - 1)."""
    images, out = _random_views(4)
    modes, factors = map(np.asarray, _draws(jax.random.split(jax.random.key(4), 48)))
    assert {S.ZOOM, S.DOWNSAMPLE} <= set(modes.tolist())
    for image, got, mode, f in zip(images, out, modes, factors):
        if mode == S.ZOOM:
            want = _apply(image, _zoom(12, f))  # no blur on a zoom
        elif mode == S.DOWNSAMPLE:
            want = _apply(image, _down(12, f, ON.blur_sigma * (f - 1.0) / (ON.max_downsample - 1.0)))
        else:
            want = image
        np.testing.assert_allclose(got, np.clip(want, 0.0, 1.0), atol=2e-5)
    assert _down(31, 4.0, 1.0).max() < _down(31, 4.0, 0.0).max()  # the PSF spreads the weights
