"""Linear probe: L2-regularised logistic regression (damped Newton, JAX) and a tie-aware ROC AUC per bootstrap draw.

The probe says whether embeddings still carry the label; it guards the separation metrics against
an encoder that wins them by collapsing.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg, special

from lmc_jax.evaluate.kernels.bootstrap import Blocks
from lmc_jax.evaluate.kernels.padding import bucket
from lmc_jax.evaluate.kernels.separation import reference_stats


_DECREMENT_FLOOR = 1e-6  # below this Newton decrement² (relative) float32 cannot check a decrease: full steps
NEWTON_HESSIAN_ROWS = 65_536  # fits on more rows take Newton steps with a subsample's Hessian (see `_evaluator`)


class ProbeParams(NamedTuple):
    """A fitted probe: the TRAIN set's z-scoring (mean, std) and the weights/intercept on z-scored features."""

    mean: np.ndarray
    std: np.ndarray
    w: np.ndarray
    b: float


class AucPairs(NamedTuple):
    """Block-pair Mann–Whitney counts: wins[a, b] = Σ over positives in block a, negatives in block b of
    [s_pos > s_neg] + ½[s_pos = s_neg]; pos/neg = positives/negatives per block."""

    wins: np.ndarray
    pos: np.ndarray
    neg: np.ndarray


class Undefined(NamedTuple):
    """A metric that cannot be computed on the given data, and why (used instead of NaN)."""

    reason: str


@jax.jit
def _value_grad_hess(theta: jax.Array, xa: jax.Array, y: jax.Array, weight: jax.Array,
                     l2: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Objective, gradient and Hessian of mean log-loss + (l2 / 2)·‖w‖² at theta = [w, b] (one O(N·D²) pass).

    xa = [x, 1]; the intercept b is not penalised; the mean is over rows with weight 1 (weight 0 = padding).
    """
    n = jnp.sum(weight)
    penalty = jnp.where(jnp.arange(xa.shape[1]) < xa.shape[1] - 1, l2, 0.0)
    logits = xa @ theta
    p = jax.nn.sigmoid(logits)
    value = jnp.sum(weight * (jax.nn.softplus(logits) - y * logits)) / n + 0.5 * jnp.sum(penalty * theta**2)
    grad = xa.T @ (weight * (p - y)) / n + penalty * theta
    hess = (xa * (weight * p * (1 - p))[:, None]).T @ xa / n + jnp.diag(penalty + 1e-7)
    return value, grad, hess


@jax.jit
def _value_grad(theta: jax.Array, xa: jax.Array, y: jax.Array, weight: jax.Array,
                l2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Objective and gradient of `_value_grad_hess` alone (O(N·D))."""
    n = jnp.sum(weight)
    penalty = jnp.where(jnp.arange(xa.shape[1]) < xa.shape[1] - 1, l2, 0.0)
    logits = xa @ theta
    value = jnp.sum(weight * (jax.nn.softplus(logits) - y * logits)) / n + 0.5 * jnp.sum(penalty * theta**2)
    return value, xa.T @ (weight * (jax.nn.sigmoid(logits) - y)) / n + penalty * theta


def _evaluator(xa: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: np.float32, n: int):
    """theta → (objective, gradient, Hessian) as float64 arrays. Up to NEWTON_HESSIAN_ROWS rows all three come
    from one `_value_grad_hess` pass; above, objective and gradient stay exact over every row and the Hessian is
    that of a fixed random NEWTON_HESSIAN_ROWS-row subsample (same optimum, linear instead of quadratic
    convergence near it, each step ~N / NEWTON_HESSIAN_ROWS times cheaper)."""
    xa_j, y_j, w_j = jnp.asarray(xa), jnp.asarray(y), jnp.asarray(weight)
    if n <= NEWTON_HESSIAN_ROWS:
        return lambda theta: tuple(np.asarray(a, np.float64) for a in _value_grad_hess(theta, xa_j, y_j, w_j, l2))
    rows = np.sort(np.random.default_rng(0).choice(n, NEWTON_HESSIAN_ROWS, replace=False))
    sub = tuple(jnp.asarray(a[rows]) for a in (xa, y, weight))

    def evaluate(theta):
        value, grad = _value_grad(theta, xa_j, y_j, w_j, l2)
        hess = _value_grad_hess(theta, *sub, l2)[2]
        return np.float64(value), np.asarray(grad, np.float64), np.asarray(hess, np.float64)

    return evaluate


def newton(evaluate, max_iter: int, tol: float, theta: np.ndarray) -> np.ndarray:
    """Minimise the objective from `theta` by Newton steps (float64 solve) with Armijo backtracking, until
    max|grad| < tol. One `evaluate` call per accepted step: a trial point's objective comes with its gradient and
    Hessian.
    """
    theta = np.asarray(theta, np.float32)
    value, grad, hess = evaluate(theta)
    for _ in range(max_iter):
        if np.max(np.abs(grad)) < tol:
            break
        step = linalg.solve(hess, grad, assume_a="pos")
        slope, t = float(grad @ step), 1.0  # slope = Newton decrement²: twice the predicted decrease
        searched = slope > _DECREMENT_FLOOR * max(abs(value), 1.0)  # else float32 cannot see the decrease
        while True:
            trial = (theta - t * step).astype(np.float32)
            new = evaluate(trial)
            if not searched or new[0] <= value - 1e-4 * t * slope or t < 1e-6:
                break
            t *= 0.5
        if not searched and np.max(np.abs(new[1])) >= np.max(np.abs(grad)):
            break  # full Newton steps no longer shrink the gradient: float32 floor reached
        theta, (value, grad, hess) = trial, new
    return theta


def fit_logistic(
    x: jax.Array, y: jax.Array, l2: float = 1e-2, *, max_iter: int = 50, tol: float = 1e-5,
    init: ProbeParams | None = None,
) -> ProbeParams:
    """Fit a binary logistic probe on x (N, D) z-scored with x's own statistics; y in {0, 1} with both classes.

    Minimises mean log-loss + (l2 / 2)·‖w‖² with an unpenalised intercept: the same optimum as
    sklearn `LogisticRegression(C=1 / (l2 * N))` on the same z-scored features. `init` (a probe fit on
    similar data, e.g. the previous fold) starts Newton from its decision function: same optimum, fewer steps.
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
    n = len(y_np)
    xa = np.zeros((bucket(n), x_np.shape[1] + 1), np.float32)  # zero rows = padding (weight 0)
    xa[:n, :-1] = (x_np - mean) / std
    xa[:n, -1] = 1.0
    weight = (np.arange(len(xa)) < n).astype(np.float32)
    y_pad = np.zeros(len(xa), np.float32)
    y_pad[:n] = y_np
    theta0 = np.zeros(xa.shape[1], np.float32)
    if init is not None:  # the same decision function, re-expressed on this fit's z-scored features
        w_raw = np.asarray(init.w, np.float64) / init.std
        theta0[:-1] = w_raw * std
        theta0[-1] = init.b - np.sum(w_raw * init.mean) + np.sum(w_raw * mean)
    # subsampled-Hessian steps converge linearly: they go on to tol / 100, where exact Newton's last quadratic
    # step lands anyway, so both give the same probe
    theta = newton(_evaluator(xa, y_pad, weight, np.float32(l2), n), max_iter,
                   tol if n <= NEWTON_HESSIAN_ROWS else tol / 100, theta0)
    return ProbeParams(mean=mean, std=std, w=theta[:-1], b=float(theta[-1]))


def predict_proba(params: ProbeParams, x: np.ndarray) -> np.ndarray:
    """P(y = 1 | x) for x (M, D) in the probe's raw input space (z-scored here with the train statistics)."""
    z = (np.asarray(x, np.float32) - params.mean) / params.std
    return special.expit(z @ params.w + params.b)


def auc_block_pairs(blocks: Blocks, y: np.ndarray, score: np.ndarray) -> AucPairs:
    """Mann–Whitney win counts between every pair of bootstrap blocks (ties count ½), in O(N·B) memory/time."""
    y, score = np.asarray(y), np.asarray(score, np.float64)
    _, tie = np.unique(score, return_inverse=True)
    num_ties = int(tie.max()) + 1 if len(tie) else 0
    neg = np.zeros((num_ties, blocks.num), np.float32)
    pos = np.zeros((num_ties, blocks.num), np.float32)
    np.add.at(neg, (tie[y == 0], blocks.ids[y == 0]), 1.0)
    np.add.at(pos, (tie[y == 1], blocks.ids[y == 1]), 1.0)
    credit = np.cumsum(neg, axis=0, dtype=np.float64) - neg + 0.5 * neg  # negatives strictly below, ties half
    wins = pos.T.astype(np.float64) @ credit
    return AucPairs(wins=wins, pos=pos.sum(axis=0, dtype=np.float64), neg=neg.sum(axis=0, dtype=np.float64))


def block_auc(pairs: AucPairs, counts: np.ndarray) -> np.ndarray:
    """ROC AUC of each block resample (counts (R, B)) → (R,); NaN when a resample lacks a class.

    With counts = 1 it is the ordinary tie-aware ROC AUC (Mann–Whitney U / (n_pos · n_neg)).
    """
    counts = np.asarray(counts, np.float64)
    wins = np.einsum("rb,bc,rc->r", counts, pairs.wins, counts)
    den = (counts @ pairs.pos) * (counts @ pairs.neg)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, wins / den, np.nan)
