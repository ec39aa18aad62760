"""Sparse embedding signatures: the dimensions an L1 logistic probe needs, chosen by grouped cross-validation.

Objective (features z-scored with the fit set's statistics, intercept unpenalised):
mean log-loss + λ‖w‖₁, the same optimum as sklearn `LogisticRegression(l1_ratio=1, C=1/(λN))`.
A path over λ (λ_max·geomspace(1, ratio)) is solved with warm starts, each step a few coordinate-descent sweeps
over a second-order model of the log-loss: proximal Newton on small fit sets, majorise-minimise on the fixed
quadratic bound on large ones (jitted JAX; `_path`). λ minimises the mean held-out log-loss over group-disjoint folds; the signature is the support at
that λ on all data; stability = how similar the folds' supports are (Jaccard) and, optionally, how often each
dimension is selected on random halves of the groups.
"""

from __future__ import annotations

from functools import partial
from itertools import combinations

import jax
import jax.numpy as jnp
import numpy as np

from lmc_jax.evaluate.kernels.protocol import group_folds
from lmc_jax.evaluate.kernels.separation import reference_stats

STABLE_FREQUENCY = 0.6  # a dimension selected in at least this share of half-samples is "stable"
_SWEEPS = 4  # coordinate-descent sweeps over the second-order model per path step


def _augment(x: np.ndarray, rows: int) -> np.ndarray:
    """[z-scored x, 1] in float32 (x's own floored statistics), zero-padded to `rows` rows."""
    mean, std = reference_stats(x)
    xa = np.zeros((max(rows, len(x)), x.shape[1] + 1), np.float32)
    xa[: len(x), :-1] = (x - mean) / std
    xa[: len(x), -1] = 1.0
    return xa


EXACT_HESSIAN_FLOPS = 2**28
"""Up to this many multiply-adds per Hessian (rows × (D + 1)²) a path step uses the exact Hessian, above it the
fixed bound XᵀX/(4N): both reach the same optimum; the exact one in far fewer steps when the classes nearly
separate (p(1 − p) ≪ 1/4: LOMO's fit sets), the bound at a fraction of the cost per step on large fit sets."""


@partial(jax.jit, static_argnames="max_iter")
def _path(xa: jax.Array, y: jax.Array, weight: jax.Array, lambdas: jax.Array, max_iter: int, tol: float) -> jax.Array:
    """Solutions θ = [w, b] for each λ, warm-started along the path → (L, D + 1).

    Each step minimises a second-order model of the log-loss at θ plus λ‖w'‖₁ by _SWEEPS cyclic coordinate-
    descent sweeps (glmnet's inner loop: the curvature matrix carries correlated dimensions, which a scalar step
    size cannot). The curvature (see EXACT_HESSIAN_FLOPS) is either the Hessian XᵀWX/N (W = p(1 − p), plus a 1e-6
    ridge) with a backtracking line search on Armijo's rule (proximal Newton, Tseng & Yun 2009), or Böhning &
    Lindsay's fixed bound XᵀX/(4N) (p(1 − p) ≤ 1/4: majorise-minimise, every full step lowers the objective).
    Stops when the step taken is below tol (max |Δθ|) or none lowers the objective. Rows with weight 0 are padding
    (one compile for every subset padded to the same length).
    """
    d1 = xa.shape[1]
    exact = xa.shape[0] * d1 * d1 <= EXACT_HESSIAN_FLOPS  # static: a choice per compiled shape
    n = jnp.sum(weight)
    penalised = jnp.arange(d1) < d1 - 1
    bound = 0.25 * (xa * weight[:, None]).T @ xa / n + 1e-6 * jnp.eye(d1)  # ridge: constant dims keep a curvature

    def loss(theta):
        z = xa @ theta
        return jnp.sum(weight * (jnp.logaddexp(0.0, z) - y * z)) / n

    def solve(theta0, lam):
        def l1(theta):
            return lam * jnp.sum(jnp.where(penalised, jnp.abs(theta), 0.0))

        def step(state):
            i, theta, _ = state
            p = jax.nn.sigmoid(xa @ theta)
            g = xa.T @ (weight * (p - y)) / n
            curvature = ((xa * (weight * p * (1.0 - p))[:, None]).T @ xa / n + 1e-6 * jnp.eye(d1)) if exact else bound
            diag = jnp.diag(curvature)

            def coordinate(t, carry):  # exact minimiser of the model along dimension j, the others held
                new_theta, moved = carry  # moved = C (new_theta − theta)
                j = t % d1
                v = new_theta[j] - (g[j] + moved[j]) / diag[j]
                shrink = lam / diag[j]  # within float32 round-off of it (as at λ_max) a weight stays 0
                soft = jnp.where(jnp.abs(v) > shrink * (1 + 1e-6), jnp.sign(v) * (jnp.abs(v) - shrink), 0.0)
                v = jnp.where(penalised[j], soft, v)
                return new_theta.at[j].set(v), moved + (v - new_theta[j]) * curvature[j]  # C is symmetric: row j

            target, _ = jax.lax.fori_loop(0, _SWEEPS * d1, coordinate, (theta, jnp.zeros_like(theta)))
            delta = target - theta
            if not exact:  # the bound majorises: the full step lowers the objective
                return i + 1, target, jnp.max(jnp.abs(delta))
            current = loss(theta) + l1(theta)
            decrease = g @ delta + l1(target) - l1(theta)  # ≤ 0: the model's predicted change (first order)

            def too_high(search):
                t, value = search
                return (value > current + 1e-4 * t * decrease) & (t > 2.0**-20)

            def halve(search):
                t = search[0] / 2
                return t, loss(theta + t * delta) + l1(theta + t * delta)

            t, value = jax.lax.while_loop(too_high, halve, (1.0, loss(target) + l1(target)))
            moved = value <= current  # no decrease even at the smallest step: θ is optimal to float32 precision
            new = jnp.where(moved, theta + t * delta, theta)
            return i + 1, new, jnp.where(moved, jnp.max(jnp.abs(t * delta)), 0.0)

        def running(state):
            return (state[0] < max_iter) & (state[2] > tol)

        _, theta, _ = jax.lax.while_loop(running, step, (0, theta0, jnp.float32(jnp.inf)))
        return theta, theta

    mean_y = jnp.clip(jnp.sum(weight * y) / n, 1e-6, 1 - 1e-6)
    theta0 = jnp.zeros((d1,), jnp.float32).at[-1].set(jnp.log(mean_y / (1 - mean_y)))
    _, thetas = jax.lax.scan(solve, theta0, lambdas)
    return thetas


def lambda_max(x: np.ndarray, y: np.ndarray) -> float:
    """Smallest λ at which every weight is zero: ‖Zᵀ(y − ȳ)‖∞ / N on the z-scored features."""
    z = _augment(x, len(x))[:, :-1].astype(np.float64)
    return float(np.max(np.abs(z.T @ (y - np.mean(y)))) / len(y))


def l1_logistic_path(x: np.ndarray, y: np.ndarray, lambdas: np.ndarray, *, max_iter: int = 1000,
                     tol: float = 1e-5, pad_to: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Weights (L, D) and intercepts (L,) of the L1 logistic probe at each λ, on x z-scored with its own statistics.

    `pad_to` pads the rows with zero-weight rows (same result; subsets of one data set then share a compile).
    """
    xa, n = _augment(x, pad_to), len(y)
    y_pad = np.zeros(len(xa), np.float32)
    y_pad[:n] = y
    weight = (np.arange(len(xa)) < n).astype(np.float32)
    thetas = np.asarray(_path(xa, y_pad, weight, np.asarray(lambdas, np.float32), max_iter, np.float32(tol)))
    return thetas[:, :-1], thetas[:, -1]


def _log_loss(x_fit: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Mean test log-loss of each (w, b) on the path, with test features z-scored by the FIT set's statistics."""
    mean, std = (np.asarray(a, np.float64) for a in reference_stats(x_fit))
    logits = ((np.asarray(x_test, np.float64) - mean) / std) @ w.T + b  # (N_test, L)
    return np.mean(np.logaddexp(0.0, logits) - y_test[:, None] * logits, axis=0)


def jaccard(a: set[int], b: set[int]) -> float | None:
    """|A ∩ B| / |A ∪ B|; None when both are empty (nothing to compare)."""
    union = a | b
    return len(a & b) / len(union) if union else None


def group_subsample(units: np.ndarray, max_rows: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted row indices of whole units (groups) taken in random order while their rows fit in `max_rows` (at least
    one unit)."""
    names, inverse, sizes = np.unique(units, return_inverse=True, return_counts=True)
    order = rng.permutation(len(names))
    taken = order[: max(1, int(np.searchsorted(np.cumsum(sizes[order]), max_rows, side="right")))]
    return np.flatnonzero(np.isin(inverse, taken))


def sparse_signature(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, *, num_folds: int, num_lambdas: int,
                     stability_rounds: int, rng: np.random.Generator, lambda_ratio: float = 1e-2,
                     max_iter: int = 1000, tol: float = 1e-4, max_rows: int = 0) -> dict:
    """Signature (selected dimensions) with λ chosen by group-disjoint CV, fold Jaccard and stability frequencies.

    Without groups, folds are random rows (noted). Paths stop at max |Δθ| < `tol` (z-scored units): ample
    for which dimensions are selected. With more than `max_rows` rows (> 0), everything runs on a random subset of
    whole groups (rows without groups: single rows) of at most that many rows, drawn from `rng` first (each step's
    cost grows with the rows; a few ten thousand rows pin the support of a few hundred dimensions).
    Returns a JSON-ready dict ("rows": the rows used), or {"undefined": reason}.
    """
    x, y = np.asarray(x, np.float32), np.asarray(y)
    units = np.arange(len(y)) if groups is None else np.asarray(groups)
    if 0 < max_rows < len(y):
        rows = group_subsample(units, max_rows, rng)
        x, y, units = x[rows], y[rows], units[rows]
    if np.unique(y).tolist() != [0, 1]:
        return {"undefined": f"labels are {np.unique(y).tolist()}, need both 0 and 1"}
    k = min(num_folds, len(np.unique(units)))
    if k < 2:
        return {"undefined": f"{k} group(s); grouped cross-validation needs at least 2"}
    top = lambda_max(x, y)
    if top <= 0:
        return {"undefined": "every dimension is constant on the train set (λ_max = 0); nothing to select"}
    folds = group_folds(units, k, rng)
    lambdas = top * np.geomspace(1.0, lambda_ratio, num_lambdas)
    losses, fold_weights = [], []
    for f in range(k):
        fit, test = folds != f, folds == f
        if np.unique(y[fit]).size < 2:
            return {"undefined": f"fold {f}: its training part has one class"}
        w, b = l1_logistic_path(x[fit], y[fit], lambdas, max_iter=max_iter, tol=tol, pad_to=len(y))
        losses.append(_log_loss(x[fit], x[test], y[test].astype(np.float64), w, b))
        fold_weights.append(w)
    cv_loss = np.average(np.stack(losses), axis=0, weights=[np.sum(folds == f) for f in range(k)])
    best = int(np.argmin(cv_loss))
    # Refits walk the path down to λ_best and stay there (same path length: no recompile; converged steps are free).
    to_best = np.where(np.arange(num_lambdas) <= best, lambdas, lambdas[best])
    w_all, _ = l1_logistic_path(x, y, to_best, max_iter=max_iter, tol=tol, pad_to=len(y))
    signature = set(np.flatnonzero(w_all[-1]).tolist())
    fold_sets = [set(np.flatnonzero(w[best]).tolist()) for w in fold_weights]
    pairs = [j for a, b in combinations(fold_sets, 2) if (j := jaccard(a, b)) is not None]
    out = {
        "lambda": float(lambdas[best]), "C": float(1.0 / (lambdas[best] * len(y))),
        "size": len(signature), "dims": sorted(signature), "num_dims": int(x.shape[1]),
        "fold_sizes": [len(s) for s in fold_sets],
        "fold_jaccard": float(np.mean(pairs)) if pairs else None,
        "lambdas": lambdas.tolist(), "cv_log_loss": cv_loss.tolist(), "folds": k,
        "grouped": groups is not None, "rows": int(len(y)), "undefined": {},
    }
    if not pairs:
        out["undefined"]["fold_jaccard"] = "every fold selected no dimension (no label signal at the chosen λ)"
    if stability_rounds:
        out.update(_stability(x, y, units, to_best, stability_rounds, rng, max_iter, tol))
    return out


def _stability(x: np.ndarray, y: np.ndarray, units: np.ndarray, lambdas: np.ndarray, rounds: int,
               rng: np.random.Generator, max_iter: int, tol: float) -> dict:
    """Selection frequency of each dimension at the chosen λ (the end of `lambdas`) over random halves of the units."""
    names = np.unique(units)
    counts, used = np.zeros(x.shape[1]), 0
    for _ in range(rounds):
        half = np.isin(units, rng.choice(names, max(1, len(names) // 2), replace=False))
        if np.unique(y[half]).size < 2:
            continue
        w, _ = l1_logistic_path(x[half], y[half], lambdas, max_iter=max_iter, tol=tol, pad_to=len(y))
        counts += w[-1] != 0
        used += 1
    if not used:
        return {"stability": None, "stable_dims": [], "stability_rounds": 0}
    frequency = counts / used
    return {"stability": frequency.tolist(), "stability_rounds": used,
            "stable_dims": np.flatnonzero(frequency >= STABLE_FREQUENCY).tolist()}
