"""Multinomial (softmax) logistic probe: the fresh post-hoc domain probe of the LOMO study and the site probe.

Pure numpy/JAX: z-scoring with the fit rows' statistics, damped Newton (`probe.newton`) on the exact Hessian.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.evaluate.kernels import probe
from lmc_jax.evaluate.kernels.padding import bucket
from lmc_jax.evaluate.kernels.separation import reference_stats


def ids(a: Any) -> np.ndarray:
    """Class ids as strings (so ints and strings from a driver compare equal)."""
    return np.asarray(a).astype(str)


class MultinomialProbe(NamedTuple):
    """A fitted softmax probe: the fit rows' z-scoring, weights (D, K) and intercepts (K,) over `classes`."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: np.ndarray
    classes: np.ndarray


@jax.jit
def _softmax_value_grad_hess(theta: jax.Array, za: jax.Array, onehot: jax.Array, weight: jax.Array,
                             l2: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean cross-entropy + (l2/2)·‖W‖² at theta = [W; b] flattened from (D + 1, K), its gradient and Hessian.

    za = [z, 1]; intercepts are not penalised; rows with weight 0 are padding. Hessian blocks
    H[(a,k),(b,l)] = mean_i za_ia za_ib p_ik (δ_kl − p_il), from one (D+1)K-wide Gram matrix.
    """
    d1, k = za.shape[1], onehot.shape[1]
    s = weight / jnp.sum(weight)
    penalty = jnp.where(jnp.arange(d1) < d1 - 1, l2, 0.0)[:, None] * jnp.ones((1, k))
    w = theta.reshape(d1, k)
    logits = za @ w
    p = jax.nn.softmax(logits, axis=1)
    nll = jax.nn.logsumexp(logits, axis=1) - jnp.sum(onehot * logits, axis=1)
    value = jnp.sum(s * nll) + 0.5 * jnp.sum(penalty * w**2)
    grad = za.T @ (s[:, None] * (p - onehot)) + penalty * w
    q = (za[:, :, None] * p[:, None, :]).reshape(len(za), d1 * k)  # column (a, k) = za_a · p_k
    diag = jnp.einsum("akb,kl->akbl", (q * s[:, None]).T.reshape(d1, k, len(za)) @ za, jnp.eye(k))
    hess = diag.reshape(d1 * k, d1 * k) - q.T @ (q * s[:, None])
    return value, grad.reshape(-1), hess + jnp.diag(penalty.reshape(-1) + 1e-7)


def fit_multinomial(x: np.ndarray, labels: np.ndarray, l2: float = 1e-2, *, max_iter: int = 50,
                    tol: float = 1e-5) -> MultinomialProbe:
    """Multinomial logistic probe of `labels` (any ids, ≥ 2 distinct) from x (N, D), z-scored with x's statistics.

    Damped Newton on the (D + 1)·K parameters (`probe.newton`, the binary probe's solver) until max|grad| < tol.
    Same optimum as sklearn `LogisticRegression(C=1/(l2·N))` (multinomial, all K classes penalised) on the same
    z-scored features, up to a common shift of the intercepts (which changes no prediction; the last one is 0).
    """
    x = np.asarray(x, np.float32)
    classes, codes = np.unique(ids(labels), return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"fit_multinomial: need ≥ 2 distinct labels; got {classes.tolist()}.")
    mean, std = reference_stats(x)
    rows, d1, k = bucket(len(x)), x.shape[1] + 1, len(classes)
    za = np.zeros((rows, d1), np.float32)  # zero rows = padding (weight 0)
    za[: len(x), :-1] = (x - mean) / std
    za[: len(x), -1] = 1.0
    onehot = np.zeros((rows, k), np.float32)
    onehot[np.arange(len(x)), codes] = 1.0
    weight = (np.arange(rows) < len(x)).astype(np.float32)
    args = tuple(jnp.asarray(a) for a in (za, onehot, weight)) + (jnp.float32(l2),)

    def evaluate(free):  # the last class's intercept stays 0: only the intercepts' common shift is free (flat)
        value, grad, hess = _softmax_value_grad_hess(jnp.asarray(np.append(free, np.float32(0.0))), *args)
        return np.float64(value), np.asarray(grad, np.float64)[:-1], np.asarray(hess, np.float64)[:-1, :-1]

    free = probe.newton(evaluate, max_iter, tol, np.zeros(d1 * k - 1, np.float32))
    theta = np.append(free, np.float32(0.0)).reshape(d1, k)
    return MultinomialProbe(mean, std, theta[:-1], theta[-1], classes)


def predict_multinomial(params: MultinomialProbe, x: np.ndarray) -> np.ndarray:
    """The most probable class (as its string id) of each row of x (M, D)."""
    z = (np.asarray(x, np.float32) - params.mean) / params.std
    return params.classes[np.argmax(z @ params.w + params.b, axis=1)]
