"""Linear probe: L2-regularised logistic regression (damped Newton, JAX) and a tie-aware ROC AUC.

The probe says whether embeddings still carry the label; it guards the separation metrics against
an encoder that wins them by collapsing.
"""

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import rankdata

from lmc_jax.evaluate.separation import reference_stats


class ProbeParams(NamedTuple):
    """A fitted probe: the TRAIN set's z-scoring (mean, std) and the weights/intercept on z-scored features."""

    mean: jax.Array
    std: jax.Array
    w: jax.Array
    b: jax.Array


class Undefined(NamedTuple):
    """A metric that cannot be computed on the given data, and why (used instead of NaN)."""

    reason: str


def _objective(theta: jax.Array, xa: jax.Array, y: jax.Array, l2: jax.Array) -> jax.Array:
    """mean log-loss + (l2 / 2)·‖w‖²; theta = [w, b], xa = [x, 1], the intercept b is not penalised."""
    logits = xa @ theta
    return jnp.mean(jax.nn.softplus(logits) - y * logits) + 0.5 * l2 * jnp.sum(theta[:-1] ** 2)


@partial(jax.jit, static_argnames="max_iter")
def _newton(xa: jax.Array, y: jax.Array, l2: jax.Array, max_iter: int, tol: float) -> jax.Array:
    """Minimise `_objective` by Newton steps with Armijo backtracking, until max|grad| < tol or max_iter."""
    n, d1 = xa.shape
    penalty = jnp.concatenate([jnp.full((d1 - 1,), 1.0), jnp.zeros((1,))]) * l2

    def grad_hess(theta):
        p = jax.nn.sigmoid(xa @ theta)
        grad = xa.T @ (p - y) / n + penalty * theta
        hess = (xa * (p * (1 - p))[:, None]).T @ xa / n + jnp.diag(penalty + 1e-7)
        return grad, hess

    def line_search(theta, step, slope):
        f0 = _objective(theta, xa, y, l2)

        def not_enough(t):
            return (_objective(theta - t * step, xa, y, l2) > f0 - 1e-4 * t * slope) & (t > 1e-6)

        t = jax.lax.while_loop(not_enough, lambda t: t * 0.5, jnp.float32(1.0))
        return theta - t * step

    def cond(state):
        i, _, grad = state
        return (i < max_iter) & (jnp.max(jnp.abs(grad)) >= tol)

    def body(state):
        i, theta, grad = state
        _, hess = grad_hess(theta)
        step = jnp.linalg.solve(hess, grad)
        theta = line_search(theta, step, grad @ step)
        return i + 1, theta, grad_hess(theta)[0]

    theta0 = jnp.zeros((d1,), jnp.float32)
    _, theta, _ = jax.lax.while_loop(cond, body, (0, theta0, grad_hess(theta0)[0]))
    return theta


def fit_logistic(
    x: jax.Array, y: jax.Array, l2: float = 1e-2, *, max_iter: int = 50, tol: float = 1e-5
) -> ProbeParams:
    """Fit a binary logistic probe on x (N, D) z-scored with x's own statistics; y in {0, 1} with both classes.

    Minimises mean log-loss + (l2 / 2)·‖w‖² with an unpenalised intercept: the same optimum as
    sklearn `LogisticRegression(C=1 / (l2 * N))` on the same z-scored features.
    """
    x_np, y_np = np.asarray(x), np.asarray(y)
    if x_np.ndim != 2 or y_np.shape != (x_np.shape[0],):
        raise ValueError(f"fit_logistic: need x (N, D) and y (N,); got {x_np.shape} and {y_np.shape}.")
    if not np.all(np.isfinite(x_np)):
        raise ValueError("fit_logistic: x contains NaN or inf; fix the embeddings before probing.")
    classes = set(np.unique(y_np).tolist())
    if classes != {0, 1}:
        raise ValueError(f"fit_logistic: labels must be binary with both 0 and 1 present; got classes {sorted(classes)}.")
    mean, std = reference_stats(x_np)
    z = (jnp.asarray(x_np, jnp.float32) - mean) / std
    xa = jnp.concatenate([z, jnp.ones((z.shape[0], 1), jnp.float32)], axis=1)
    theta = _newton(xa, jnp.asarray(y_np, jnp.float32), jnp.float32(l2), max_iter, tol)
    return ProbeParams(mean=mean, std=std, w=theta[:-1], b=theta[-1])


@jax.jit
def predict_proba(params: ProbeParams, x: jax.Array) -> jax.Array:
    """P(y = 1 | x) for x (M, D) in the probe's raw input space (z-scored here with the train statistics)."""
    z = (jnp.asarray(x, jnp.float32) - params.mean) / params.std
    return jax.nn.sigmoid(z @ params.w + params.b)


def roc_auc(y: np.ndarray, score: np.ndarray) -> float | Undefined:
    """ROC AUC by Mann–Whitney U with ties as average ranks (float64; equals sklearn's roc_auc_score).

    Returns `Undefined(reason)` rather than NaN when a class is missing.
    """
    y, score = np.asarray(y), np.asarray(score, np.float64)
    if y.shape != score.shape or y.ndim != 1:
        raise ValueError(f"roc_auc: y and score must be 1-D of equal length; got {y.shape} and {score.shape}.")
    if y.size == 0:
        return Undefined("no examples")
    n_pos = int(np.sum(y == 1))
    n_neg = int(np.sum(y == 0))
    if n_pos + n_neg != y.size:
        raise ValueError(f"roc_auc: labels must be 0/1; got classes {sorted(np.unique(y).tolist())}.")
    if n_pos == 0 or n_neg == 0:
        present = 1 if n_pos else 0
        return Undefined(f"only one class (label {present}) among {y.size} examples")
    ranks = rankdata(score, method="average")
    u = np.sum(ranks[y == 1]) - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
