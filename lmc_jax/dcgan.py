"""The DCGAN-augmented baseline: a class-conditional DCGAN trained on the train tiles, whose samples join the batches.

`run` is the stage the driver calls: it trains the GAN (`train`: one jitted step updating D then G with the
non-saturating loss, plus a small mode-seeking term for G, and Adam(lr, b1=0.5, b2=0.999)), draws a class-balanced
bank of samples (`bank`), and writes `workdir/dcgan/` = samples.png (a grid, fake and real rows per class),
summary.json (losses, wall time, Fréchet distance of samples vs real) and bank.npz (images uint8, labels int64),
every file written atomically; a second call with the same config and data reuses the bank. The networks live in
`lmc_jax/models/dcgan.py`.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from flax import nnx
from PIL import Image, ImageDraw

from lmc_jax.errors import ConfigError, DivergedError, UserError, require
from lmc_jax.evaluate.kernels.separation import frechet_distance, standardize
from lmc_jax.models.dcgan import BN_MOMENTUM, Discriminator, Generator, num_levels

# The keys of config.dcgan that make a bank (and must match for it to be reused); `ratio` and `bank_path` say how
# the bank is used, so changing them keeps it
KEYS = ("num_steps", "batch_size", "latent_dim", "width", "learning_rate", "bank_size")
# per step: the two adversarial losses, the mean D probability on the real / fake batch, the mode-seeking term
METRICS = ("d_loss", "g_loss", "d_real", "d_fake", "mode_seeking")
# Weight of the mode-seeking term in G's loss (Mao et al. 2019, MSGAN): 1 / (mean|G(z1,y) - G(z2,y)| /
# mean|z1 - z2| + 1e-5) over pairs of fakes of one class. Without it the generator ignored z within a class on the
# embedded H&E tiles (one image per class from ~150 up to 1500 steps at 32 and 64 px, with BatchNorm or spectral
# norm in D, whichever network was winning). 0.1 keeps z in use there (across-z / within-tile spread 0.7 after
# 500 steps at 32 px, vs 0.09 without; real tiles ~1); 0.3 and MSGAN's 1 already out-weigh the adversarial term on
# a low-diversity toy set (samples drift off their class colour). 0 = the plain DCGAN objective.
MODE_SEEKING_WEIGHT = 0.1
_CHECK_EVERY = 25  # steps between host reads of the metrics (the non-finite check names the exact step)
_SAMPLE_CHUNK = 256  # images per generator call when sampling (one compiled shape)
_RECALIBRATION_SIZE = 1024  # generator samples whose batch statistics become the BatchNorm running averages
_FD_MAX_SAMPLES = 2048  # rows per set for the Fréchet distances of the summary
_FOLDER = "dcgan"
# XLA:CPU backend optimisation off for functions that run once (state creation): halves their compile time
_FAST_COMPILE = {"xla_backend_optimization_level": 0}




@dataclasses.dataclass(frozen=True)
class StepSpec:
    """What the jitted step closes over (hashable, static): the two graph definitions and the latent size (the
    learning rate lives in the optimizer states, so trying another one does not recompile)."""

    g_def: nnx.GraphDef
    d_def: nnx.GraphDef
    latent_dim: int


# ------------------------------------------------------------------------------------------------ checks


def dcgan_config(cfg_or_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The `config.dcgan` block of a full config, or the block itself; its KEYS checked (missing or bad → one line)."""
    cfg = cfg_or_config.dcgan if "dcgan" in cfg_or_config else cfg_or_config
    missing = [k for k in KEYS if k not in cfg]
    if missing:
        raise ConfigError(f"config.dcgan lacks {', '.join(missing)}: take the block from configs/default.py.")
    for key in ("num_steps", "batch_size", "latent_dim", "width", "bank_size"):
        value = cfg[key]
        require(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1,
                f"dcgan.{key}", value, "must be a positive integer.", ConfigError)
    require(cfg.batch_size >= 2, "dcgan.batch_size", cfg.batch_size,
            "must be at least 2 (fakes are drawn in pairs of one class for the mode-seeking term).", ConfigError)
    require(isinstance(cfg.learning_rate, (int, float)) and np.isfinite(cfg.learning_rate) and cfg.learning_rate > 0,
            "dcgan.learning_rate", cfg.learning_rate, "must be a positive number (DCGAN's is 2e-4).", ConfigError)
    return cfg


def check_inputs(images: np.ndarray, labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 tiles [N, T, T, 3] (T = b·2^n, models/dcgan.base_and_levels), int labels [N] in [0, num_classes), every class present; else one line."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8:
        raise UserError(f"DCGAN images have dtype {images.dtype}: pass uint8 tiles [N, T, T, 3] (0..255).")
    if images.ndim != 4 or images.shape[-1] != 3 or images.shape[1] != images.shape[2] or not len(images):
        raise UserError(f"DCGAN images have shape {images.shape}: pass a non-empty batch of square RGB tiles "
                        "[N, T, T, 3].")
    try:
        num_levels(images.shape[1])
    except ValueError as error:
        raise UserError(str(error)) from None
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UserError(f"DCGAN num_classes={num_classes!r}: must be a positive integer.")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise UserError(f"DCGAN labels have shape {labels.shape} and dtype {labels.dtype}: pass one integer label "
                        f"per image, shape ({len(images)},).")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise UserError(f"DCGAN labels span [{labels.min()}, {labels.max()}], outside [0, {num_classes}): drop "
                        "unlabelled rows (-1) first, or pass the right num_classes.")
    absent = sorted(set(range(num_classes)) - set(np.unique(labels).tolist()))
    if absent:
        raise UserError(f"DCGAN classes {absent} have no training tiles: a class-conditional generator cannot learn "
                        "them; pass tiles of every class or a smaller num_classes.")
    return images, labels.astype(np.int32)


# ------------------------------------------------------------------------------------------------ pure core


def init(num_classes: int, image_size: int, cfg: ml_collections.ConfigDict, seed: int) -> tuple[StepSpec, dict]:
    """Fresh generator, discriminator and Adam states: (static spec, state {g, g_stats, d, d_stats, g_opt, d_opt})."""
    spec, create = _creator(int(num_classes), int(image_size), int(cfg.latent_dim), int(cfg.width))
    return spec, create(jnp.asarray(seed, jnp.uint32), jnp.asarray(cfg.learning_rate, jnp.float32))


@functools.lru_cache(maxsize=None)
def _creator(num_classes: int, image_size: int, latent_dim: int,
             width: int) -> tuple[StepSpec, Callable[[jax.Array, jax.Array], dict]]:
    """The spec and ONE jitted state constructor ((seed, learning rate) → state) per architecture: eager NNX
    construction dispatches every initialiser separately, and a fresh jit per call recompiles (seconds on CPU)."""
    def build(seed: jax.Array) -> tuple[Generator, Discriminator]:
        rngs = nnx.Rngs(params=jax.random.key(seed))
        return (Generator(num_classes, image_size, latent_dim=latent_dim, width=width, rngs=rngs),
                Discriminator(num_classes, image_size, width=width, rngs=rngs))

    g_abstract, d_abstract = nnx.eval_shape(lambda: build(jnp.zeros((), jnp.uint32)))
    spec = StepSpec(nnx.graphdef(g_abstract), nnx.graphdef(d_abstract), latent_dim)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def create(seed: jax.Array, learning_rate: jax.Array) -> dict:
        generator, discriminator = build(seed)
        _, g, g_stats = nnx.split(generator, nnx.Param, nnx.BatchStat)
        _, d, d_stats = nnx.split(discriminator, nnx.Param, nnx.BatchStat)
        tx = _adam(learning_rate)
        return dict(g=g, g_stats=g_stats, d=d, d_stats=d_stats, g_opt=tx.init(g), d_opt=tx.init(d))

    return spec, create


def _adam(learning_rate: float | jax.Array = 0.0) -> optax.GradientTransformation:
    """Adam(lr, b1=0.5, b2=0.999), DCGAN's optimizer, for both networks; lr is held in its state (set at init)."""
    return optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, b1=0.5, b2=0.999)


def _to_unit(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] → float32 [-1, 1], the generator's tanh range."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def _to_uint8(images: jax.Array) -> jax.Array:
    """float [-1, 1] → uint8 [0, 255], rounded and clipped."""
    return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def _discriminate(spec: StepSpec, d: nnx.State, d_stats: nnx.State, images: jax.Array,
                  labels: jax.Array) -> tuple[jax.Array, nnx.State]:
    """D logits on one batch in train mode (its own batch statistics) and the updated running statistics."""
    model = nnx.merge(spec.d_def, d, d_stats, copy=True)
    logits = model(images, labels, train=True)
    return logits, nnx.state(model, nnx.BatchStat)


def mode_seeking(fake1: jax.Array, fake2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
    """MSGAN's term (Mao et al. 2019): 1 / (mean|fake1 - fake2| / mean|z1 - z2| + 1e-5), pairs of one class;
    large when two latents give (nearly) the same image, so minimising it keeps z in use."""
    ratio = jnp.mean(jnp.abs(fake1 - fake2)) / jnp.mean(jnp.abs(z1 - z2))
    return 1.0 / (ratio + 1e-5)


@functools.partial(jax.jit, static_argnames=("spec",), donate_argnames=("state",))
def train_step(state: dict, images: jax.Array, labels: jax.Array, key: jax.Array, *,
               spec: StepSpec) -> tuple[dict, dict[str, jax.Array]]:
    """One DCGAN step on uint8 images [B, T, T, 3]: D on the real batch and G(z, labels), then G through the new D.

    The fakes are generated once (train-mode BatchNorm, running statistics updated once per step) and their VJP
    is reused for G's update, as the usual PyTorch loop does with one forward. Non-saturating loss, softplus form:
    L_D = softplus(-D(x)) + softplus(D(G(z))), L_G = softplus(-D(G(z))) (batch means) + MODE_SEEKING_WEIGHT × the
    mode-seeking term. The fakes' labels are the first half of the real batch's, twice, so fake i and fake i + B/2
    share a class (the mode-seeking pairs); the class mix still follows the data.
    """
    tx = _adam()  # the learning rate comes from the states
    real = _to_unit(images)
    z = jax.random.normal(key, (images.shape[0], spec.latent_dim), jnp.float32)
    half = images.shape[0] // 2
    fake_labels = jnp.concatenate([labels[:half], labels[:half], labels[2 * half:]])

    # Modules are merged with copy=True inside the transforms: NNX refuses to update a BatchStat Variable it
    # shares with an outer trace.
    def generate(g, g_stats):
        model = nnx.merge(spec.g_def, g, g_stats, copy=True)
        return model(z, fake_labels, train=True), nnx.state(model, nnx.BatchStat)

    fake, g_vjp, g_stats = jax.vjp(generate, state["g"], state["g_stats"], has_aux=True)

    def d_loss_fn(d, d_stats):
        real_logits, d_stats = _discriminate(spec, d, d_stats, real, labels)
        fake_logits, d_stats = _discriminate(spec, d, d_stats, jax.lax.stop_gradient(fake), fake_labels)
        loss = jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))
        return loss, (d_stats, real_logits, fake_logits)

    (d_loss, (d_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state["d"], state["d_stats"])
    d_updates, d_opt = tx.update(d_grads, state["d_opt"], state["d"])
    d = optax.apply_updates(state["d"], d_updates)

    def g_loss_fn(images, d, d_stats):
        logits, _ = _discriminate(spec, d, d_stats, images, fake_labels)  # D's statistics kept from its own step
        adversarial = jnp.mean(jax.nn.softplus(-logits))
        seeking = mode_seeking(images[:half], images[half:2 * half], z[:half], z[half:2 * half])
        return adversarial + MODE_SEEKING_WEIGHT * seeking, (adversarial, seeking)

    (_, (g_loss, seeking)), fake_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(fake, d, d_stats)
    g_grads, _ = g_vjp(fake_grads)
    g_updates, g_opt = tx.update(g_grads, state["g_opt"], state["g"])
    g = optax.apply_updates(state["g"], g_updates)
    metrics = dict(d_loss=d_loss, g_loss=g_loss, d_real=jnp.mean(jax.nn.sigmoid(real_logits)),
                   d_fake=jnp.mean(jax.nn.sigmoid(fake_logits)), mode_seeking=seeking)
    return dict(g=g, g_stats=g_stats, d=d, d_stats=d_stats, g_opt=g_opt, d_opt=d_opt), metrics


@functools.partial(jax.jit, static_argnames=("g_def",))
def _generate(g: nnx.State, g_stats: nnx.State, z: jax.Array, labels: jax.Array, *, g_def: nnx.GraphDef) -> jax.Array:
    """Sample mode: G on the BatchNorm running averages (each sample independent of its batch) → uint8 images."""
    return _to_uint8(nnx.merge(g_def, g, g_stats, copy=True)(z, labels, train=False))


@functools.partial(jax.jit, static_argnames=("g_def",))
def _population_stats(g: nnx.State, g_stats: nnx.State, z: jax.Array, labels: jax.Array, *,
                      g_def: nnx.GraphDef) -> nnx.State:
    """G's BatchNorm statistics over one large train-mode batch (g_def built with momentum 0: they replace the
    running averages)."""
    model = nnx.merge(g_def, g, g_stats, copy=True)
    model(z, labels, train=True)
    return nnx.state(model, nnx.BatchStat)


def recalibrate(generator: Generator, key: jax.Array, labels: np.ndarray) -> None:
    """Sets G's BatchNorm running averages to the statistics of the FINAL weights ("precise BN"), on samples whose
    labels follow `labels` (the training class mix the batches had): sample mode then matches train mode."""
    for _, module in nnx.iter_modules(generator):
        if isinstance(module, nnx.BatchNorm):
            module.momentum = 0.0
    g_def, g, g_stats = nnx.split(generator, nnx.Param, nnx.BatchStat)
    z = jax.random.normal(key, (len(labels), generator.latent_dim), jnp.float32)
    nnx.update(generator, _population_stats(g, g_stats, z, jnp.asarray(labels), g_def=g_def))
    for _, module in nnx.iter_modules(generator):
        if isinstance(module, nnx.BatchNorm):
            module.momentum = BN_MOMENTUM


# ------------------------------------------------------------------------------------------------ loop


def train(images: np.ndarray, labels: np.ndarray, *, num_classes: int, cfg: ml_collections.ConfigDict,
          seed: int) -> tuple[Generator, dict[str, np.ndarray]]:
    """Trains the conditional DCGAN for cfg.num_steps steps on seeded random minibatches (with replacement);
    → (generator with recalibrated BatchNorm, history {METRICS name: float32 [num_steps]})."""
    cfg = dcgan_config(cfg)
    images, labels = check_inputs(images, labels, num_classes)
    spec, state = init(num_classes, images.shape[1], cfg, seed)
    rng = np.random.default_rng(seed)
    key = jax.random.fold_in(jax.random.key(seed), 1)
    rows: list[dict[str, np.ndarray]] = []
    pending: list[dict[str, jax.Array]] = []
    for step in range(cfg.num_steps):
        index = rng.integers(len(images), size=cfg.batch_size)
        state, metrics = train_step(state, images[index], labels[index], jax.random.fold_in(key, step), spec=spec)
        pending.append(metrics)
        if len(pending) == _CHECK_EVERY or step == cfg.num_steps - 1:
            fetched = jax.device_get(pending)
            _check_finite(fetched, step - len(pending) + 1, cfg)
            rows.extend(fetched)
            pending = []
    history = {name: np.array([row[name] for row in rows], np.float32) for name in METRICS}
    generator = nnx.merge(spec.g_def, state["g"], state["g_stats"])
    recalibrate(generator, jax.random.fold_in(jax.random.key(seed), 3), rng.choice(labels, _RECALIBRATION_SIZE))
    return generator, history


def _check_finite(rows: list[dict], first_step: int, cfg: ml_collections.ConfigDict) -> None:
    """Raises DivergedError naming the first step (0-based) whose losses are not finite, and the fix."""
    for offset, row in enumerate(rows):
        bad = [f"{name}={float(row[name])}" for name in ("d_loss", "g_loss") if not np.isfinite(row[name])]
        if bad:
            raise DivergedError(f"DCGAN step {first_step + offset}: {', '.join(bad)} is not finite; rerun with a "
                                "lower learning rate (e.g. "
                                f"--config.dcgan.learning_rate={cfg.learning_rate / 4:g}).")


# ------------------------------------------------------------------------------------------------ sampling


def sample(generator: Generator, key: jax.Array, labels: np.ndarray) -> np.ndarray:
    """Images of the given classes from G in sample mode: int labels [N] → uint8 [N, T, T, 3]."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or (
            len(labels) and (labels.min() < 0 or labels.max() >= generator.num_classes)):
        raise UserError(f"DCGAN sample labels (shape {labels.shape}, dtype {labels.dtype}): pass integer labels [N] "
                        f"in [0, {generator.num_classes}).")
    g_def, g, g_stats = nnx.split(generator, nnx.Param, nnx.BatchStat)
    size = generator.image_size
    out = np.empty((len(labels), size, size, 3), np.uint8)
    for i, start in enumerate(range(0, len(labels), _SAMPLE_CHUNK)):
        chunk = labels[start:start + _SAMPLE_CHUNK]
        padded = np.zeros(_SAMPLE_CHUNK, np.int32)
        padded[:len(chunk)] = chunk
        z = jax.random.normal(jax.random.fold_in(key, i), (_SAMPLE_CHUNK, generator.latent_dim), jnp.float32)
        images = _generate(g, g_stats, z, jnp.asarray(padded), g_def=g_def)
        out[start:start + len(chunk)] = np.asarray(images)[:len(chunk)]
    return out


def bank(generator: Generator, key: jax.Array, size: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """`size` samples, classes balanced (counts differ by at most one, labels cycling 0..C-1) →
    (images uint8 [size, T, T, 3], labels int64 [size])."""
    if num_classes != generator.num_classes:
        raise UserError(f"DCGAN bank num_classes={num_classes}: the generator was trained on "
                        f"{generator.num_classes} classes; pass that.")
    labels = np.arange(size, dtype=np.int64) % num_classes
    return sample(generator, key, labels), labels


# ------------------------------------------------------------------------------------------------ outputs


def grid_size(tile: int, num_classes: int, per_class: int, with_real: bool) -> tuple[int, int]:
    """(width, height) in pixels of `write_grid`'s PNG: a label margin, then per_class cells of the (upscaled) tile."""
    cell = tile * _scale(tile) + _PAD
    rows = num_classes * (2 if with_real else 1)
    return _MARGIN + per_class * cell + _PAD, rows * cell + _PAD


_PAD = 2  # pixels between cells
_MARGIN = 64  # left column holding the row names


def _scale(tile: int) -> int:
    """Integer upscaling so that every cell is at least 64 px wide (16-px tiles are otherwise hard to judge)."""
    return max(1, 64 // tile)


def write_grid(path: epath.PathLike, fake: np.ndarray, fake_labels: np.ndarray, real: np.ndarray | None = None,
               real_labels: np.ndarray | None = None, per_class: int = 8) -> epath.Path:
    """A PNG for a person to judge the samples: per class a row of `per_class` fakes ("c fake") and, when real tiles
    are given, a row of real tiles of that class under it ("c real"); written atomically, size = `grid_size`."""
    fake, fake_labels = np.asarray(fake), np.asarray(fake_labels)
    with_real = real is not None
    real_top = np.asarray(real_labels).max(initial=-1) if with_real else -1
    num_classes = int(max(fake_labels.max(initial=-1), real_top)) + 1
    tile = fake.shape[1]
    scale, cell = _scale(tile), tile * _scale(tile) + _PAD
    canvas = Image.new("RGB", grid_size(tile, num_classes, per_class, with_real), "white")
    draw = ImageDraw.Draw(canvas)
    sets = [("fake", fake, fake_labels)] + ([("real", np.asarray(real), np.asarray(real_labels))] if with_real else [])
    for c in range(num_classes):
        for r, (name, images, labels) in enumerate(sets):
            top = _PAD + (c * len(sets) + r) * cell
            draw.text((4, top + 4), f"{c} {name}", fill="black")
            for j, image in enumerate(images[labels == c][:per_class]):
                tile_image = Image.fromarray(image).resize((tile * scale,) * 2, Image.NEAREST)
                canvas.paste(tile_image, (_MARGIN + j * cell, top))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return _write_atomic(path, buffer.getvalue())


def _write_atomic(path: epath.PathLike, data: bytes) -> epath.Path:
    """Writes `data` to a temporary sibling, then renames it over `path` (no reader sees half a file)."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def pixel_features(images: np.ndarray) -> np.ndarray:
    """Raw-pixel features when no encoder is given: 4×4 average-pooled RGB and per-channel std, in [0, 1] (51 dims)."""
    x = np.asarray(images, np.float32) / 255.0
    n, t = len(x), x.shape[1]
    pooled = x.reshape(n, 4, t // 4, 4, t // 4, 3).mean(axis=(2, 4)).reshape(n, -1)
    return np.concatenate([pooled, x.std(axis=(1, 2))], axis=1)


def sample_distance(features_fn: Callable[[np.ndarray], np.ndarray], real_images: np.ndarray,
                    fake_images: np.ndarray) -> float:
    """FID-style: our Fréchet distance between features_fn(real) and features_fn(fake) (uint8 images → [N, D]),
    both z-scored with the real set's statistics (as the evaluation's distances are), so the scale is the real
    features' per-dimension spread."""
    real = np.asarray(features_fn(real_images), np.float32)
    fake = np.asarray(features_fn(fake_images), np.float32)
    return float(frechet_distance(standardize(real, real), standardize(fake, real)))


def _digest(images: np.ndarray, labels: np.ndarray) -> str:
    """A short hash of the training tiles and labels: a bank is only reused for the data it was made from."""
    h = hashlib.blake2b(digest_size=12)
    h.update(np.ascontiguousarray(images).data)
    h.update(np.ascontiguousarray(labels.astype(np.int64)).data)
    return h.hexdigest()


def _distances(features_fn: Callable | None, images: np.ndarray, labels: np.ndarray, fake: np.ndarray,
               fake_labels: np.ndarray, seed: int) -> dict:
    """Fréchet distances of the summary: samples vs real (overall and per class), and real vs real (two halves of
    the training tiles) as the floor a perfect generator would reach at these sample sizes."""
    fn = features_fn or pixel_features
    rng = np.random.default_rng(seed)
    real_index = rng.permutation(len(images))[:_FD_MAX_SAMPLES]
    fake_index = rng.permutation(len(fake))[:_FD_MAX_SAMPLES]
    real, real_y, gen, gen_y = images[real_index], labels[real_index], fake[fake_index], fake_labels[fake_index]
    out = dict(features=("encoder features (features_fn)" if features_fn else
                         "raw-pixel features (4x4-pooled RGB + per-channel std), no encoder given"),
               fd=sample_distance(fn, real, gen))
    out["fd_per_class"] = {str(c): (sample_distance(fn, real[real_y == c], gen[gen_y == c])
                                    if min(np.sum(real_y == c), np.sum(gen_y == c)) >= 2 else None)
                           for c in np.unique(fake_labels).tolist()}
    half = len(real) // 2
    out["fd_real_halves"] = sample_distance(fn, real[:half], real[half:]) if half >= 2 else None
    return out


def run(cfg_or_config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray, num_classes: int,
        workdir: epath.PathLike, seed: int,
        features_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> epath.Path:
    """The driver's DCGAN stage → path of workdir/dcgan/bank.npz (images uint8, labels int64, made_with JSON).

    Reuses an existing bank made with the same config, seed, classes and data; a different one raises (one line,
    naming the fix). Otherwise trains, then writes samples.png, summary.json and, last, bank.npz.
    """
    cfg = dcgan_config(cfg_or_config)
    images, labels = check_inputs(images, labels, num_classes)
    folder = epath.Path(workdir) / _FOLDER
    bank_path = folder / "bank.npz"
    made_with = json.loads(json.dumps(dict(cfg={k: cfg[k] for k in KEYS}, seed=int(seed), num_classes=int(num_classes),
                                           tile_size=int(images.shape[1]), num_images=len(images),
                                           data=_digest(images, labels))))
    if bank_path.exists():
        try:
            with bank_path.open("rb") as f:
                stored = json.loads(str(np.load(io.BytesIO(f.read()))["made_with"]))
        except (OSError, KeyError, ValueError) as error:
            raise UserError(f"{bank_path} is not a bank lmc_jax.dcgan.run wrote ({error}): delete {folder} to "
                            "retrain the DCGAN.") from None
        if stored != made_with:
            differ = sorted(k for k in made_with if stored.get(k) != made_with.get(k))
            if "cfg" in differ:
                differ[differ.index("cfg")] = "cfg." + ",".join(
                    sorted(k for k in made_with["cfg"] if stored.get("cfg", {}).get(k) != made_with["cfg"][k]))
            raise UserError(f"{bank_path} was made with a different {'; '.join(differ)}: delete {folder} to "
                            "retrain the DCGAN, or use the config and data it was made with.")
        return bank_path
    start = time.perf_counter()
    generator, history = train(images, labels, num_classes=num_classes, cfg=cfg, seed=seed)
    train_seconds = time.perf_counter() - start
    key = jax.random.fold_in(jax.random.key(seed), 2)
    fake, fake_labels = bank(generator, key, cfg.bank_size, num_classes)
    write_grid(folder / "samples.png", fake, fake_labels, images, labels)
    window = min(50, cfg.num_steps)
    summary = dict(
        made_with=made_with, steps=int(cfg.num_steps), train_seconds=round(train_seconds, 2),
        seconds_per_step=round(train_seconds / cfg.num_steps, 4),
        first_50=({name: float(history[name][:window].mean()) for name in METRICS}),
        last_50=({name: float(history[name][-window:].mean()) for name in METRICS}),
        distance=_distances(features_fn, images, labels, fake, fake_labels, seed),
        history={name: [round(float(v), 5) for v in history[name]] for name in METRICS},
    )
    summary["wall_seconds"] = round(time.perf_counter() - start, 2)
    _write_atomic(folder / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    buffer = io.BytesIO()
    np.savez(buffer, images=fake, labels=fake_labels, made_with=np.array(json.dumps(made_with, sort_keys=True)))
    return _write_atomic(bank_path, buffer.getvalue())


def load_bank(path: epath.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels int64) of a bank written by `run`."""
    with epath.Path(path).open("rb") as f:
        data = np.load(io.BytesIO(f.read()))
        return data["images"], data["labels"]
