"""Cross-correlation (Barlow Twins) loss on known inputs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmc_jax.losses import cross_correlation, cross_correlation_loss, lmc_loss


def _decorrelated(n: int, d: int) -> jnp.ndarray:
    """Columns orthogonal with zero mean and unit variance: C of the set with itself is I."""
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(n, d)) - 0.0)
    q = q - q.mean(axis=0)
    q, _ = np.linalg.qr(q)  # re-orthogonalise after centring (columns stay ~zero-mean)
    z = (q - q.mean(axis=0)) / q.std(axis=0)
    return jnp.asarray(z, jnp.float32)


def test_identical_decorrelated_views_give_zero_loss():
    z = _decorrelated(256, 8)
    loss, terms = cross_correlation_loss(z, z, off_diagonal_weight=1.0)
    assert float(terms["on_diagonal"]) < 1e-3
    assert float(loss) < 2e-2


def test_identical_correlated_views_pay_off_diagonal():
    base = _decorrelated(256, 8)
    z = base.at[:, 1].set(base[:, 0])  # two identical features
    loss, terms = cross_correlation_loss(z, z, off_diagonal_weight=1.0)
    assert float(terms["on_diagonal"]) < 1e-3
    assert float(terms["off_diagonal"]) > 1.5  # C01 = C10 ≈ 1
    assert float(loss) > 1.5


def test_independent_views_pay_on_diagonal():
    key1, key2 = jax.random.split(jax.random.key(0))
    z1, z2 = jax.random.normal(key1, (512, 16)), jax.random.normal(key2, (512, 16))
    _, terms = cross_correlation_loss(z1, z2, off_diagonal_weight=0.0)
    assert float(terms["on_diagonal"]) > 12.0  # Cii ≈ 0 for each of 16 features


def test_cross_correlation_matches_numpy():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(64, 5)), rng.normal(size=(64, 5))
    standard = lambda z: (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)  # noqa: E731
    expected = standard(z1).T @ standard(z2) / 64
    np.testing.assert_allclose(cross_correlation(jnp.asarray(z1), jnp.asarray(z2)), expected, atol=1e-5)


def test_loss_is_invariant_to_feature_scale_and_shift():
    key1, key2 = jax.random.split(jax.random.key(2))
    z1, z2 = jax.random.normal(key1, (128, 8)), jax.random.normal(key2, (128, 8))
    a, _ = cross_correlation_loss(z1, z2, 0.01)
    b, _ = cross_correlation_loss(3.0 * z1 + 5.0, 0.5 * z2 - 1.0, 0.01)
    np.testing.assert_allclose(a, b, rtol=1e-4)


def test_lmc_loss_averages_all_view_pairs():
    z = jax.random.normal(jax.random.key(3), (3, 64, 8))
    loss, _ = lmc_loss(z, 0.005)
    pairs = [cross_correlation_loss(z[i], z[j], 0.005)[0] for i, j in itertools.combinations(range(3), 2)]
    np.testing.assert_allclose(loss, np.mean(pairs), rtol=1e-6)


def test_lmc_loss_needs_two_views():
    with pytest.raises(ValueError, match="num_views"):
        lmc_loss(jnp.zeros((1, 8, 4)), 0.005)
