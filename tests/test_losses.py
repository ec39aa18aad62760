"""Cross-correlation (Barlow Twins) loss on known inputs."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lmc_jax.losses import (
    cross_correlation,
    cross_correlation_loss,
    dann_schedule,
    domain_adversarial_loss,
    grad_reverse,
    lmc_loss,
)


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


@pytest.mark.parametrize("scale", [0.0, 0.37, 2.5])
def test_grad_reverse_is_identity_forward_and_negated_scaled_gradient_backward(scale):
    x = jax.random.normal(jax.random.key(4), (5, 3))
    f = lambda y: jnp.sum(jnp.sin(y) * jnp.arange(3.0))  # noqa: E731 - a gradient that is not all ones
    np.testing.assert_array_equal(grad_reverse(x, scale), x)
    plain = jax.grad(f)(x)
    reversed_ = jax.grad(lambda y: f(grad_reverse(y, scale)))(x)
    np.testing.assert_allclose(reversed_, -scale * plain, rtol=1e-6, atol=1e-7)


def test_grad_reverse_takes_a_traced_scale_and_gives_it_no_gradient():
    x = jnp.arange(4.0)
    dx, dscale = jax.jit(jax.grad(lambda y, s: jnp.sum(grad_reverse(y, s) ** 2), argnums=(0, 1)))(x, jnp.float32(0.5))
    np.testing.assert_allclose(dx, -0.5 * 2 * x)
    assert float(dscale) == 0.0


def test_dann_schedule_runs_from_zero_to_almost_one_monotonically():
    p = np.linspace(0.0, 1.0, 101)
    lam = np.asarray(dann_schedule(p, gamma=10.0))
    np.testing.assert_allclose(lam, 2.0 / (1.0 + np.exp(-10.0 * p)) - 1.0, atol=1e-6)  # the DANN paper's form
    assert lam[0] == 0.0
    assert 0.999 < lam[-1] < 1.0  # tanh(5) ≈ 0.99991
    assert np.all(np.diff(lam) > 0)
    assert float(dann_schedule(0.5, gamma=1.0)) < float(dann_schedule(0.5, gamma=10.0))


def test_domain_adversarial_loss_matches_numpy_and_is_stable():
    rng = np.random.default_rng(5)
    logits, labels = rng.normal(scale=3.0, size=(2, 32)), rng.integers(0, 2, size=(2, 32))
    sigmoid = 1.0 / (1.0 + np.exp(-logits))
    expected = -np.mean(labels * np.log(sigmoid) + (1 - labels) * np.log(1 - sigmoid))
    np.testing.assert_allclose(domain_adversarial_loss(jnp.asarray(logits), jnp.asarray(labels)), expected, rtol=1e-5)
    extreme = domain_adversarial_loss(jnp.array([200.0, -200.0, 200.0]), jnp.array([0, 1, 1]))
    np.testing.assert_allclose(extreme, (200.0 + 200.0 + 0.0) / 3, rtol=1e-6)  # log(1+e^200) = 200, no overflow
