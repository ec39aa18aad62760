"""Tests for lmc_jax/stain/macenko.py: parity with torchstain's NumPy backend on real H&E tiles, never NaN."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from data_pipelines import sites
from lmc_jax.stain import color, macenko, robust
from tests import stain_tiles

@pytest.fixture(scope="module")
def slide():
    return stain_tiles.slide_tiles()


@pytest.fixture(scope="module")
def torchstain_numpy(slide):
    torchstain = pytest.importorskip("torchstain")
    normalizer = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
    normalizer.fit(slide[1])
    return normalizer


def test_fit_matches_torchstain(slide, torchstain_numpy):
    params = macenko.fit(slide[1])
    np.testing.assert_allclose(params.stain_matrix, torchstain_numpy.HERef.T, atol=1e-5)
    np.testing.assert_allclose(params.max_concentrations, torchstain_numpy.maxCRef, rtol=1e-5)


def test_transform_matches_torchstain(slide, torchstain_numpy):
    tiles, reference = slide
    params = macenko.fit(reference)
    expected = np.stack([torchstain_numpy.normalize(tile, stains=False)[0] for tile in tiles]).astype(np.int32)
    stain_tiles.assert_matches_torchstain(macenko.transform, params, tiles, expected)


def test_per_image_estimates_match_torchstain(slide, torchstain_numpy):
    torchstain = pytest.importorskip("torchstain")
    tiles, _ = slide
    found, flags = macenko.estimate_stains(tiles)
    assert (np.asarray(flags) == robust.NORMALIZED).all()
    for index, tile in enumerate(tiles):
        reference = torchstain.normalizers.MacenkoNormalizer(backend="numpy")
        reference.fit(tile)
        np.testing.assert_allclose(found.stain_matrix[index], reference.HERef.T, atol=1e-4)
        np.testing.assert_allclose(found.max_concentrations[index], reference.maxCRef, rtol=1e-4)


def test_closed_form_plane_matches_numpy_eigh():
    rng = np.random.default_rng(0)
    covariances = np.stack([np.cov(rng.normal(size=(3, 60)) * rng.uniform(0.05, 1.0, (3, 1))) for _ in range(300)])
    values, vectors = np.linalg.eigh(covariances)
    separated = np.min(np.diff(values, axis=1), axis=1) > 0.05 * values[:, -1]  # else ill-defined for any solver
    planes = np.asarray(jax.jit(jax.vmap(macenko._leading_plane))(jnp.asarray(covariances[separated], jnp.float32)))
    cosines = np.abs(np.sum(planes * vectors[separated][:, :, 1:], axis=1))
    assert separated.sum() > 100
    np.testing.assert_allclose(cosines, 1.0, atol=1e-5)
    assert not np.any(macenko._leading_plane(jnp.zeros((3, 3))))


def test_result_does_not_depend_on_the_rest_of_the_batch(slide):
    tiles, reference = slide
    params = macenko.fit(reference)
    together, _ = macenko.transform(tiles, params)
    alone, _ = macenko.transform(tiles[2:3], params)
    # XLA:CPU compiles batch 1 and batch 6 with other vector widths (AVX-512 machines): a level may flip
    alone_diff = np.abs(np.asarray(together[2], int) - np.asarray(alone[0], int))
    assert alone_diff.max() <= 1 and alone_diff.mean() < 1e-3
    nested = jnp.asarray(tiles).reshape(2, 3, *tiles.shape[1:])
    stacked, _ = jax.vmap(lambda batch: macenko.transform(batch, params))(nested)
    diff = np.abs(np.asarray(stacked, int).reshape(tiles.shape) - np.asarray(together, int))
    assert diff.max() <= 1 and diff.mean() < 1e-3  # vmap batches the reductions: float rounding may flip a level


def test_undoes_another_labs_stain_matrix(slide):
    """The `stain_transfer` site re-stains a tile; normalizing both versions to one target brings them together."""
    tiles, reference = slide
    params = macenko.fit(reference)
    transferred = np.stack([sites.render_site("stain_transfer", tile) for tile in tiles])
    before = np.abs(tiles.astype(float) - transferred).mean()
    a, _ = macenko.transform(tiles, params)
    b, _ = macenko.transform(transferred, params)
    after = np.abs(np.asarray(a, float) - np.asarray(b, float)).mean()
    assert after < 0.7 * before, (before, after)  # measured: 10.2 → 6.2 grey levels


def test_no_tissue_and_flat_patches_come_back_unchanged(slide):
    params = macenko.fit(slide[1])
    patches = stain_tiles.special_patches()
    out, flags = macenko.transform(patches, params)
    np.testing.assert_array_equal(out, patches)
    np.testing.assert_array_equal(flags, stain_tiles.SPECIAL_FLAGS)
    with pytest.raises(ValueError, match="no_tissue"):
        macenko.fit(patches[0])


def test_own_params_are_identity_on_two_stain_images():
    """Up to uint8 rounding (its off-plane part is projected away): measured mean 1.0, max 2 grey levels."""
    tiles = stain_tiles.synthetic_stains(color.DEFAULT_STAIN_MATRIX, seed=0, io=240.0)
    for tile in tiles:
        out, flags = macenko.transform(tile[None], macenko.fit(tile))
        assert int(flags[0]) == robust.NORMALIZED
        diff = np.abs(np.asarray(out[0], int) - tile)
        assert diff.mean() < 1.5 and diff.max() <= 3


_UINT8_BATCH = st.one_of(
    hnp.arrays(np.uint8, (2, 8, 8, 3)),
    st.integers(0, 3).map(lambda i: stain_tiles.special_patches()[[i, 3 - i]]),
    st.integers(0, 2**31 - 1).map(lambda seed: stain_tiles.synthetic_stains(
        color.DEFAULT_STAIN_MATRIX, seed, size=8, io=240.0)),
)


@settings(max_examples=30, deadline=None)
@given(batch=_UINT8_BATCH)
def test_any_batch_gives_finite_output_in_range(batch):
    params = macenko.MacenkoParams.reference()
    out, flags = macenko.transform(batch, params)
    stain_tiles.assert_flagged_unchanged(batch, out, flags)
    assert set(np.asarray(flags).tolist()) <= set(robust.FLAG_NAMES)
    out_float, flags_float = macenko.transform(batch.astype(np.float32) / 255.0, params)
    stain_tiles.assert_unit_range(out_float)
    np.testing.assert_array_equal(flags_float, flags)


def test_params_json_round_trip_and_validation(slide):
    params = macenko.fit(slide[1])
    loaded = macenko.MacenkoParams.from_dict(json.loads(json.dumps(params.to_dict())))
    np.testing.assert_allclose(loaded.stain_matrix, params.stain_matrix, rtol=1e-7)
    with pytest.raises(ValueError, match="max_concentrations"):
        macenko.MacenkoParams.from_dict({**params.to_dict(), "max_concentrations": [1.0, -1.0]})
    with pytest.raises(ValueError, match="'reinhard'"):
        macenko.MacenkoParams.from_dict({**params.to_dict(), "method": "reinhard"})
    with pytest.raises(ValueError, match="alpha"):
        macenko.MacenkoConfig(alpha=60)
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        macenko.transform(slide[1], params)
