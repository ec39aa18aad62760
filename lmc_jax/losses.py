"""LMC objective (Barlow-Twins cross-correlation between stain views) and the DANN baseline's pieces.

All statistics are taken over the batch axis of the arrays passed in. Under `jax.jit` with the
batch sharded over a mesh, that axis is the GLOBAL batch, so the loss (and its gradient) is the
same on 1 device and on N devices without any hand-written collective.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp


def standardize_over_batch(z: jax.Array, eps: float = 1e-5) -> jax.Array:
    """Batch norm without learned affine: zero mean, unit variance per feature over axis -2."""
    z = z.astype(jnp.float32)
    mean = z.mean(axis=-2, keepdims=True)
    var = z.var(axis=-2, keepdims=True)
    return (z - mean) * jax.lax.rsqrt(var + eps)


def cross_correlation(z1: jax.Array, z2: jax.Array) -> jax.Array:
    """C = BN(z1)ᵀ BN(z2) / N for z1, z2 of shape [N, D]; C[i, i] = 1 for identical views."""
    n = z1.shape[0]
    return standardize_over_batch(z1).T @ standardize_over_batch(z2) / n


def cross_correlation_loss(
    z1: jax.Array, z2: jax.Array, off_diagonal_weight: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Barlow Twins: Σᵢ(1 − Cᵢᵢ)² + λ Σᵢ Σⱼ≠ᵢ Cᵢⱼ². Returns (loss, {on_diagonal, off_diagonal})."""
    c = cross_correlation(z1, z2)
    diag = jnp.diagonal(c)
    on = jnp.sum((1.0 - diag) ** 2)
    off = jnp.sum(c**2) - jnp.sum(diag**2)
    return on + off_diagonal_weight * off, {"on_diagonal": on, "off_diagonal": off}


def lmc_loss(projections: jax.Array, off_diagonal_weight: float) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean Barlow-Twins loss over all unordered pairs of the K views, projections [K, N, D].

    Averaging over pairs (rather than against the views' mean) keeps every pair's term on the
    scale of the two-view loss, so λ and learning rates transfer from Barlow Twins unchanged.
    """
    num_views = projections.shape[0]
    if num_views < 2:
        raise ValueError(f"lmc_loss needs K ≥ 2 views, got {num_views} (config.lmc.num_views)")
    pairs = list(itertools.combinations(range(num_views), 2))
    losses, on, off = [], [], []
    for i, j in pairs:
        loss, terms = cross_correlation_loss(projections[i], projections[j], off_diagonal_weight)
        losses.append(loss)
        on.append(terms["on_diagonal"])
        off.append(terms["off_diagonal"])
    mean = lambda xs: sum(xs) / len(pairs)  # noqa: E731
    return mean(losses), {"on_diagonal": mean(on), "off_diagonal": mean(off)}


@jax.custom_vjp
def grad_reverse(x: jax.Array, scale: jax.Array | float) -> jax.Array:
    """Gradient-reversal layer (Ganin & Lempitsky): identity forward, −scale × gradient backward.

    `scale` may be traced (DANN's scheduled λ_p); it receives no gradient.
    """
    return x


def _grad_reverse_fwd(x: jax.Array, scale: jax.Array | float) -> tuple[jax.Array, jax.Array]:
    return x, jnp.asarray(scale)


def _grad_reverse_bwd(scale: jax.Array, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    return (-scale * g).astype(g.dtype), jnp.zeros_like(scale)


grad_reverse.defvjp(_grad_reverse_fwd, _grad_reverse_bwd)


def dann_schedule(progress: jax.Array | float, gamma: float = 10.0) -> jax.Array:
    """DANN's reversal strength λ_p = 2/(1+exp(−γp))−1 for training progress p ∈ [0, 1]: 0 at p=0, → 1.

    Computed as its identity tanh(γp/2), which neither overflows nor cancels for any p.
    """
    return jnp.tanh(0.5 * gamma * jnp.asarray(progress, jnp.float32))


def domain_adversarial_loss(logits: jax.Array, domain_labels: jax.Array) -> jax.Array:
    """Mean binary cross-entropy of domain logits against 0/1 labels, stable for any logit size.

    Uses −[y log σ(z) + (1−y) log(1−σ(z))] = log(1+eᶻ) − y·z = max(z, 0) − y·z + log1p(e^−|z|).
    """
    z = logits.astype(jnp.float32)
    y = domain_labels.astype(jnp.float32)
    return jnp.mean(jnp.maximum(z, 0.0) - y * z + jnp.log1p(jnp.exp(-jnp.abs(z))))


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(mean softmax cross-entropy, accuracy) of logits [..., C] over the rows whose integer label is ≥ 0.

    Rows labelled −1 (unlabelled tiles, DCGAN samples without a domain) count in neither; with no labelled
    row both are 0, so a batch without labels contributes no gradient instead of a NaN.
    """
    valid = labels >= 0
    safe = jnp.where(valid, labels, 0).astype(jnp.int32)
    log_p = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    nll = -jnp.take_along_axis(log_p, safe[..., None], axis=-1)[..., 0]
    count = jnp.maximum(jnp.sum(valid), 1)
    correct = (jnp.argmax(logits, axis=-1) == safe) & valid
    return jnp.sum(jnp.where(valid, nll, 0.0)) / count, jnp.sum(correct) / count
