"""Training the detection head and predicting whole-image heat maps: the jitted steps and the loops around them.

The encoder is frozen by default (its patch tokens are computed once per training window and cached); with
`finetune_encoder` its weights train too and the tokens are recomputed every step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from lmc_jax.detection import data as ddata
from lmc_jax.detection.head import DetectionHead, patch_grid
from lmc_jax.detection.heatmap import LOSSES, gaussian_targets
from lmc_jax.evaluate.kernels.padding import batched
from lmc_jax.models.vit import ViT
from lmc_jax.optim import warmup_cosine_adamw

Transform = Callable[[np.ndarray], np.ndarray]  # uint8 windows → uint8 windows (a stain normaliser, or identity)


@dataclasses.dataclass(frozen=True)
class Windows:
    """Training windows and their targets' inputs."""

    images: np.ndarray  # uint8 [N, S, S, 3], after the input transform
    centres: np.ndarray  # float32 [N, K, 2] (y, x) in window pixels, padded
    valid: np.ndarray  # bool [N, K]
    sigma: np.ndarray  # float32 [N] Gaussian σ in pixels (σ_µm / the window's scanner µm/px)

    @property
    def positive(self) -> np.ndarray:
        """Windows holding at least one centre inside them (not only in the margin around them)."""
        inside = np.all((self.centres >= 0) & (self.centres < self.images.shape[1]), axis=-1)
        return np.any(self.valid & inside, axis=1)


@dataclasses.dataclass(frozen=True)
class Detector:
    """A trained head with the encoder it reads: predicts heat maps of whole images."""

    encoder_def: nnx.GraphDef
    encoder_params: nnx.State
    head_def: nnx.GraphDef
    head_params: nnx.State
    window: int
    stride: int
    losses: tuple[float, ...]  # training loss every step


def training_windows(images: list[ddata.Image], size: int, dcfg: ml_collections.ConfigDict,
                     transform: Transform, rng: np.random.Generator) -> Windows:
    """Per image: every grid window holding a mitotic figure, `jitter_per_truth` windows placed at random around
    each figure, and up to `negatives_per_image` random grid windows without one; `transform` applied to all."""
    crops, centres = [], []
    sigmas = []
    for image in images:
        margin = 3 * dcfg.sigma_microns / image.microns_per_pixel
        windows, origins = ddata.grid_windows(image.pixels, size)
        inside = [ddata.centres_in(image.truths, o, size, margin) for o in origins]
        has = np.array([len(ddata.centres_in(image.truths, o, size)) > 0 for o in origins], bool)
        negatives = np.flatnonzero(~has)
        chosen = np.r_[np.flatnonzero(has), rng.choice(negatives, min(dcfg.negatives_per_image, len(negatives)),
                                                       replace=False)].astype(int)
        crops += [windows[i] for i in chosen]
        centres += [inside[i] for i in chosen]
        for y, x in image.truths:
            for _ in range(dcfg.jitter_per_truth):
                top, left = int(y) - int(rng.integers(0, size)), int(x) - int(rng.integers(0, size))
                crops.append(ddata.crop(image.pixels, top, left, size))
                centres.append(ddata.centres_in(image.truths, (top, left), size, margin))
        sigmas += [dcfg.sigma_microns / image.microns_per_pixel] * (len(crops) - len(sigmas))
    k = max([len(c) for c in centres] + [1])
    padded = np.zeros((len(centres), k, 2), np.float32)
    valid = np.zeros((len(centres), k), bool)
    for i, c in enumerate(centres):
        padded[i, : len(c)], valid[i, : len(c)] = c, True
    return Windows(batched(transform, np.stack(crops), dcfg.batch_size), padded, valid, np.asarray(sigmas, np.float32))


def split_encoder(graphdef: nnx.GraphDef, params: dict) -> tuple[nnx.GraphDef, nnx.State]:
    """The encoder part (graphdef, params) of an LMC model given as a run's (graphdef, params)."""
    return nnx.split(nnx.merge(graphdef, params).encoder)


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Everything static about a training step (hashable: rows with equal specs share one compiled step)."""

    encoder_def: nnx.GraphDef
    head_def: nnx.GraphDef
    finetune: bool
    loss: str
    loss_kwargs: tuple[tuple[str, float], ...]
    shape: tuple[int, int]
    stride: int
    learning_rate: float
    weight_decay: float
    num_steps: int


def _optimizer(spec: StepSpec) -> optax.GradientTransformation:
    """AdamW with a 10% linear warm-up then cosine decay (one object per setting, so jit caches hold)."""
    return warmup_cosine_adamw(spec.learning_rate, spec.weight_decay, spec.num_steps)


def _tokens(encoder_def: nnx.GraphDef, params: nnx.State, images: jax.Array) -> jax.Array:
    return patch_grid(nnx.merge(encoder_def, params), images.astype(jnp.float32) / 255.0)


@functools.partial(jax.jit, static_argnames=("encoder_def",))
def _grid(params: nnx.State, images: jax.Array, *, encoder_def: nnx.GraphDef) -> jax.Array:
    """uint8 windows → their patch-token grids."""
    return _tokens(encoder_def, params, images)


def _loss(spec: StepSpec, params: tuple, inputs: jax.Array, centres: jax.Array, valid: jax.Array,
          sigma: jax.Array) -> jax.Array:
    tokens = _tokens(spec.encoder_def, params[1], inputs) if spec.finetune else inputs.astype(jnp.float32)
    logits = nnx.merge(spec.head_def, params[0])(tokens)
    targets = gaussian_targets(centres, valid, sigma, shape=spec.shape, stride=spec.stride)
    return LOSSES[spec.loss](logits, targets, **dict(spec.loss_kwargs))


@functools.partial(jax.jit, static_argnames=("spec",))
def _step(params: tuple, opt_state: optax.OptState, inputs: jax.Array, centres: jax.Array, valid: jax.Array,
          sigma: jax.Array, *, spec: StepSpec) -> tuple[tuple, optax.OptState, jax.Array]:
    """One AdamW step on the head (and, when fine-tuning, the encoder) parameters."""
    loss, grads = jax.value_and_grad(functools.partial(_loss, spec))(params, inputs, centres, valid, sigma)
    updates, opt_state = _optimizer(spec).update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


@functools.partial(jax.jit, static_argnames=("encoder_def", "head_def"))
def _score(params: tuple, images: jax.Array, *, encoder_def: nnx.GraphDef, head_def: nnx.GraphDef) -> jax.Array:
    """uint8 windows → heat-map probabilities [B, S/stride, S/stride]."""
    return jax.nn.sigmoid(nnx.merge(head_def, params[1])(_tokens(encoder_def, params[0], images)))


def train_head(encoder_def: nnx.GraphDef, encoder_params: nnx.State, windows: Windows,
               dcfg: ml_collections.ConfigDict, seed: int) -> Detector:
    """Trains a DetectionHead (and, with dcfg.finetune_encoder, the encoder) on `windows` with AdamW for
    dcfg.num_steps steps; each batch draws dcfg.positive_fraction of its windows from those holding a figure."""
    encoder: ViT = nnx.merge(encoder_def, encoder_params)
    size = windows.images.shape[1]
    if dcfg.heatmap_stride < 1 or encoder.patch % dcfg.heatmap_stride:
        raise ValueError(f"config.detection.heatmap_stride={dcfg.heatmap_stride} must divide the patch size "
                         f"{encoder.patch}")
    head_def, head_params = nnx.split(DetectionHead(encoder.width, dcfg.hidden, encoder.patch // dcfg.heatmap_stride,
                                                    rngs=nnx.Rngs(params=seed)))
    spec = StepSpec(encoder_def, head_def, bool(dcfg.finetune_encoder), dcfg.loss,
                    (("gamma", dcfg.focal_gamma),) if dcfg.loss == "focal" else (("pos_weight", dcfg.pos_weight),),
                    (size // dcfg.heatmap_stride,) * 2, dcfg.heatmap_stride, dcfg.learning_rate, dcfg.weight_decay,
                    dcfg.num_steps)
    cached = None if spec.finetune else batched(
        lambda x: _grid(encoder_params, x, encoder_def=encoder_def), windows.images, dcfg.batch_size)
    trainable = (head_params, encoder_params) if spec.finetune else (head_params,)
    opt_state = _optimizer(spec).init(trainable)
    rng = np.random.default_rng(seed)
    positives, everything = np.flatnonzero(windows.positive), np.arange(len(windows.images))
    n_pos = int(round(dcfg.positive_fraction * dcfg.batch_size)) if len(positives) else 0
    losses = []
    for _ in range(dcfg.num_steps):
        rows = np.r_[rng.choice(positives, n_pos), rng.choice(everything, dcfg.batch_size - n_pos)].astype(int)
        inputs = windows.images[rows] if spec.finetune else cached[rows]
        trainable, opt_state, loss = _step(trainable, opt_state, inputs, windows.centres[rows], windows.valid[rows],
                                           windows.sigma[rows], spec=spec)
        losses.append(float(loss))
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"detection head training diverged (loss {losses[-1]}); lower "
                                 "config.detection.learning_rate")
    return Detector(encoder_def, trainable[1] if spec.finetune else encoder_params, head_def, trainable[0], size,
                    dcfg.heatmap_stride, tuple(losses))


def stitch(maps: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Per-window maps [rows·cols, h, w, ...] in row-major window order → one map [rows·h, cols·w, ...]
    (the inverse of `data.grid_windows`)."""
    h, w = maps.shape[1:3]
    return maps.reshape(rows, cols, h, w, *maps.shape[3:]).swapaxes(1, 2).reshape(rows * h, cols * w, *maps.shape[3:])


def heatmap_fn(detector: Detector, transform: Transform, batch: int) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 image [H, W, 3] → probability heat map [⌈H/stride⌉, ⌈W/stride⌉]: the image padded white and cut into
    the detector's windows, each transformed, encoded and scored, the windows' maps put back in place."""
    params, size, stride = (detector.encoder_params, detector.head_params), detector.window, detector.stride
    defs = {"encoder_def": detector.encoder_def, "head_def": detector.head_def}

    def predict(pixels: np.ndarray) -> np.ndarray:
        windows, _ = ddata.grid_windows(pixels, size)
        rows, cols = -(-pixels.shape[0] // size), -(-pixels.shape[1] // size)
        heat = stitch(batched(lambda x: _score(params, transform(x), **defs), windows, batch), rows, cols)
        return heat[: -(-pixels.shape[0] // stride), : -(-pixels.shape[1] // stride)]

    return predict
