"""Tests for lmc_jax/stain/robust.py: fixed-shape masked quantiles equal numpy's, empty masks give 0, flags."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lmc_jax.stain import robust

_quantile = jax.jit(robust.masked_quantile)


@settings(max_examples=60, deadline=None)
@given(
    values=hnp.arrays(np.float32, 40, elements=st.floats(-100, 100, width=32)),
    seed=st.integers(0, 2**31 - 1),
    q=st.floats(0.0, 1.0),
)
def test_masked_quantile_equals_numpy_percentile(values, seed, q):
    rng = np.random.default_rng(seed)
    mask = rng.random(values.shape) < rng.random()
    mask[rng.integers(values.size)] = True
    got = float(_quantile(values, mask, q))
    expected = np.percentile(values[mask].astype(np.float64), 100 * q)
    assert got == pytest.approx(expected, abs=1e-5 * (1.0 + float(np.abs(values).max())))


def test_masked_quantile_rows_ties_and_large_rows():
    rng = np.random.default_rng(0)
    values = np.round(rng.normal(size=(3, 5000)), 2).astype(np.float32)  # many ties
    mask = rng.random((3, 5000)) < 0.5
    qs = np.array([0.01, 0.5, 0.99], np.float32)
    got = np.asarray(_quantile(values, mask, qs))
    expected = [np.percentile(values[i][mask[i]], 100 * qs[i]) for i in range(3)]
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_empty_mask_and_nonfinite_give_zero():
    assert float(robust.masked_quantile(np.ones(7), np.zeros(7, bool), 0.5)) == 0.0
    assert float(robust.masked_mean(np.ones(7), np.zeros(7, bool))) == 0.0
    got = robust.masked_quantile(np.array([1.0, np.inf, 3.0]), np.array([True, True, True]), 1.0)
    assert np.isfinite(got)


def test_intensity_round_trip_and_dtypes():
    image = np.arange(24, dtype=np.uint8).reshape(2, 4, 3) * 10
    intensity = robust.to_intensity(image)
    assert intensity.dtype == jnp.float32
    np.testing.assert_array_equal(robust.from_intensity(intensity, image), image)
    as_float = image.astype(np.float32) / 255.0
    np.testing.assert_allclose(robust.to_intensity(as_float), intensity, atol=1e-4)
    back = robust.from_intensity(intensity + 0.4, as_float)
    assert back.dtype == jnp.float32 and float(back.max()) <= 1.0
    np.testing.assert_array_equal(robust.to_intensity(np.array([np.nan, 2.0, -1.0])), [255.0, 255.0, 0.0])
    with pytest.raises(TypeError, match="int32"):
        robust.to_intensity(np.zeros(3, np.int32))


def test_check_batch_and_flags():
    with pytest.raises(ValueError, match=r"image\[None\]"):
        robust.check_batch(jnp.zeros((4, 4, 3)), "x.py")
    flags = robust.combine_flags((jnp.array([True, False, False]), robust.NO_TISSUE),
                                 (jnp.array([True, True, False]), robust.DEGENERATE))
    np.testing.assert_array_equal(flags, [robust.NO_TISSUE, robust.DEGENERATE, robust.NORMALIZED])
    assert set(robust.FLAG_NAMES) == {robust.NORMALIZED, robust.NO_TISSUE, robust.DEGENERATE}


def test_tissue_mask_excludes_glass_and_black():
    intensity = jnp.array([[250.0, 150.0, 5.0], [250.0, 100.0, 5.0], [250.0, 160.0, 5.0]])
    od = robust.optical_density(intensity, 240.0)
    np.testing.assert_array_equal(robust.tissue_mask(intensity, od, 0.15), [False, True, False])


def test_map_groups_pads_and_trims_the_batch():
    batch = jnp.arange(11 * 2, dtype=jnp.float32).reshape(11, 2)
    seen = []

    def fn(group):
        seen.append(group.shape)
        return group * 2.0, jnp.sum(group, axis=1)

    doubled, sums = jax.jit(lambda b: robust.map_groups(fn, b))(batch)
    np.testing.assert_array_equal(doubled, batch * 2.0)
    np.testing.assert_array_equal(sums, batch.sum(axis=1))
    expected_group = robust.CPU_GROUP if jax.default_backend() == "cpu" else 11
    assert seen == [(expected_group, 2)]
