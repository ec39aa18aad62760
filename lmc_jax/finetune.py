"""Fine-tuning a pre-trained encoder with a linear classification head, end to end, with cross-entropy.

The step is a pure jitted function (params, optimiser state, uint8 batch, labels → new params, new state, metrics);
the loop draws batches at random from in-memory tiles, flips/rotates them on the host (the D4 augmentation of the
train pipeline), scores the model on a selection split every `eval_every` steps and at the end, and keeps the
parameters of the best score (the earliest on ties). Everything random follows `seed`.
"""

from __future__ import annotations

import dataclasses
import functools
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from lmc_jax.evaluate.embed import embed
from lmc_jax.optim import warmup_cosine_adamw
from lmc_jax.stain.augment import center_crop

NUM_CLASSES = 2


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a step (hashable: equal specs share one compiled step and one optimiser)."""

    encoder_def: nnx.GraphDef
    head_def: nnx.GraphDef
    crop_size: int
    learning_rate: float
    weight_decay: float
    num_steps: int


def optimizer(spec: StepSpec) -> optax.GradientTransformation:
    """AdamW with a 10% linear warm-up then cosine decay over spec.num_steps."""
    return warmup_cosine_adamw(spec.learning_rate, spec.weight_decay, spec.num_steps)


def init_head(encoder_def: nnx.GraphDef, encoder_params: nnx.State, seed: int) -> tuple[nnx.GraphDef, dict]:
    """A linear head on the encoder's embedding; (head graphdef, trainable params {"encoder", "head"}) as arrays on
    the default device (the encoder's copied off any mesh, so every step sees the same input layout)."""
    encoder_params = jax.tree.map(jnp.asarray, jax.device_get(encoder_params))
    encoder = nnx.merge(encoder_def, encoder_params)
    head_def, head_params = nnx.split(nnx.Linear(encoder.num_features, NUM_CLASSES, rngs=nnx.Rngs(params=seed)))
    return head_def, {"encoder": encoder_params, "head": head_params}


@functools.partial(jax.jit, static_argnames=("spec",))
def _features(spec: StepSpec, params: dict, images: jax.Array) -> jax.Array:
    return nnx.merge(spec.encoder_def, params["encoder"])(center_crop(images, spec.crop_size))


def _logits(spec: StepSpec, params: dict, images: jax.Array) -> jax.Array:
    return nnx.merge(spec.head_def, params["head"])(_features(spec, params, images))


def _loss(spec: StepSpec, params: dict, images: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = _logits(spec, params, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits


@functools.partial(jax.jit, static_argnames=("spec",))
def train_step(params: dict, opt_state: optax.OptState, images: jax.Array, labels: jax.Array, *,
               spec: StepSpec) -> tuple[dict, optax.OptState, dict[str, jax.Array]]:
    """One AdamW step on encoder and head: uint8 images [B, T, T, 3], int labels [B] → (params, state, metrics
    {"loss", "accuracy"} of the batch before the update)."""
    (loss, logits), grads = jax.value_and_grad(functools.partial(_loss, spec), has_aux=True)(params, images, labels)
    updates, opt_state = optimizer(spec).update(grads, opt_state, params)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
    return optax.apply_updates(params, updates), opt_state, {"loss": loss, "accuracy": accuracy}


@functools.partial(jax.jit, static_argnames=("spec",))
def predict_proba(params: dict, images: jax.Array, *, spec: StepSpec) -> jax.Array:
    """uint8 images → P(y = 1) [B]."""
    return jax.nn.softmax(_logits(spec, params, images), axis=-1)[:, 1]


def flip_rotate(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Per image a random element of D4 (a 90° rotation k ∈ {0..3}, then a horizontal flip with P = ½), as the
    train pipeline augments each record."""
    out = np.empty_like(images)
    for i, (k, flip) in enumerate(zip(rng.integers(4, size=len(images)), rng.integers(2, size=len(images)))):
        image = np.rot90(images[i], k=int(k))
        out[i] = image[:, ::-1] if flip else image
    return out


def checkpoint_steps(num_steps: int, every: int) -> list[int]:
    """The steps whose parameters are candidates: every `every`-th and the last ([0] without training)."""
    return sorted({*range(every, num_steps + 1, every), num_steps})


@dataclasses.dataclass
class Selection:
    """The best candidate so far by validation score; a later one replaces it only when strictly better."""

    best_step: int = -1
    best_score: float = -np.inf
    best_params: dict | None = None
    history: list[tuple[int, float]] = dataclasses.field(default_factory=list)

    def offer(self, step: int, score: float, params: dict) -> None:
        """Records (step, score); keeps `params` if the score beats the best so far."""
        self.history.append((int(step), float(score)))
        if score > self.best_score:
            self.best_step, self.best_score, self.best_params = int(step), float(score), params


@dataclasses.dataclass(frozen=True)
class FineTuned:
    """The selected fine-tuned model and how it was chosen."""

    spec: StepSpec
    params: dict
    selected_step: int
    history: tuple[tuple[int, float], ...]  # (step, selection accuracy %) of every candidate
    losses: tuple[float, ...]  # training loss every step

    def proba(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """P(y = 1) of uint8 images [N, T, T, 3], in padded batches of `batch_size`."""
        return embed(lambda x: np.asarray(predict_proba(self.params, x, spec=self.spec)), images, batch_size)

    def features(self, images: np.ndarray, batch_size: int) -> np.ndarray:
        """The fine-tuned encoder's embeddings [N, D] of uint8 images (centre crop), in padded batches."""
        return embed(lambda x: np.asarray(_features(self.spec, self.params, x)), images, batch_size)


def finetune(encoder_def: nnx.GraphDef, encoder_params: nnx.State, crop_size: int, train: dict[str, np.ndarray],
             select: dict[str, np.ndarray], *, num_steps: int, batch_size: int, learning_rate: float,
             weight_decay: float, eval_every: int, eval_batch_size: int, seed: int) -> FineTuned:
    """Trains encoder + linear head on train["image"], train["label"] for `num_steps` AdamW steps (batches drawn at
    random, flipped/rotated on the host); keeps the candidate of best accuracy on `select` (see Selection)."""
    head_def, params = init_head(encoder_def, encoder_params, seed)
    spec = StepSpec(encoder_def, head_def, crop_size, float(learning_rate), float(weight_decay), int(num_steps))
    opt_state = optimizer(spec).init(params)
    rng = np.random.default_rng(seed)
    selection, losses, n = Selection(), [], len(train["label"])
    candidates = set(checkpoint_steps(num_steps, eval_every))

    def score(candidate: dict) -> float:
        proba = embed(lambda x: np.asarray(predict_proba(candidate, x, spec=spec)), select["image"], eval_batch_size)
        return float(100.0 * np.mean((proba >= 0.5) == (select["label"] == 1)))

    if 0 in candidates:
        selection.offer(0, score(params), params)
    for step in range(1, num_steps + 1):
        rows = rng.choice(n, batch_size, replace=n < batch_size)
        params, opt_state, metrics = train_step(params, opt_state, flip_rotate(train["image"][rows], rng),
                                                train["label"][rows].astype(np.int32), spec=spec)
        losses.append(float(metrics["loss"]))
        if not np.isfinite(losses[-1]):
            raise FloatingPointError(f"fine-tuning diverged at step {step} (loss {losses[-1]}); lower "
                                     "config.wilds.finetune_learning_rate")
        if step in candidates:
            selection.offer(step, score(params), params)
    return FineTuned(spec, selection.best_params, selection.best_step, tuple(selection.history), tuple(losses))

