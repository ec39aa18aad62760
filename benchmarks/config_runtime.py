"""Expected runtimes of the real-archive experiment configs (issue 16), estimated from compiled FLOPs.

    python benchmarks/config_runtime.py [--out DIR]     # ~1.5 min on a 2-core CPU: lowers every step, runs none
    python benchmarks/config_runtime.py --tiny          # the same accounting on tiny shapes (the test suite)

No H200 or TPU was at hand when the configs were written, so this does not time them: for each of
configs/camelyon16_crossbatch.py, midog_detection.py, camelyon17_wilds.py and breakhis_lomo.py it lists the
training runs the config's mode performs (steps × FLOPs per step) and the evaluation's forward passes (tiles ×
FLOPs per tile), each cost taken from XLA's cost analysis of the REAL jitted function at the config's model,
batch and views (`train.compile_step`, `finetune.train_step`, the detection head's `_step` and `_score`,
`dcgan.train_step`, the evaluation encoder `embed._encode`), lowered with abstract inputs
(`jax.ShapeDtypeStruct`) and never compiled or run. Tile counts come from the public data set sizes and the
config's caps (the assumptions are printed with the table). The totals become wall time on one H200 (989 TFLOP/s
dense bf16) and a TPU v4-8 (4 chips × 275 TFLOP/s) at 16% MFU (NVIDIA's published JAX ViT-B/16 training
reference, 1,459 img/s per H100; the implied MFU is recomputed here from our own ViT-B/16 classifier step) and at
40% (the project's target). Not counted: host work (data building, stain normalisers, probes, the metric
suite), compilation, checkpoints and input stalls; the estimate is the accelerator's share only.
Writes DIR/config_runtime.json and DIR/config_runtime.md (DIR: $OUT, else ./config_runtime_out) and prints the
table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import pathlib
import runpy
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from lmc_jax import dcgan, finetune, methods, parallel, train  # noqa: E402
from lmc_jax.config_edit import with_values  # noqa: E402
from lmc_jax.detection import fit as detection_fit  # noqa: E402
from lmc_jax.detection.head import DetectionHead  # noqa: E402
from lmc_jax.evaluate import embed  # noqa: E402
from lmc_jax.modes import lomo  # noqa: E402
from lmc_jax.throughput import PEAK_FLOPS_BF16, compiled_flops, cpu_model, seconds_at  # noqa: E402

CONFIGS = ("camelyon16_crossbatch", "midog_detection", "camelyon17_wilds", "breakhis_lomo")
HARDWARE = {"1× H200": PEAK_FLOPS_BF16["NVIDIA H200"], "TPU v4-8": 4 * PEAK_FLOPS_BF16["TPU v4"]}
UTILISATIONS = (0.16, 0.40)  # NVIDIA's JAX ViT-B/16 reference on H100 (see reference_mfu); the project's target
NVIDIA_VIT_B16_IMAGES_PER_S = 1459.0  # per H100, JAX ViT-B/16 224 px training (NVIDIA's published reference)

# Public data set sizes (the counts the tile arithmetic starts from).
WILDS_SPLITS = {"train": 302_436, "id_val": 33_560, "val": 34_904, "test": 85_054}  # 455,954 patches in all
BREAKHIS_IMAGES = {"40X": 1_995, "100X": 2_081, "200X": 2_013, "400X": 1_820}  # 7,909 images
BREAKHIS_TRAIN_SHARE = 0.7  # the builder's patient-disjoint 70/30 split, taken as 70% of the images
MIDOG_IMAGES_PER_SCANNER, MIDOG_ANNOTATED_SCANNERS = 50, 3  # 200 images, 4 scanners, Leica GT450 unlabelled
MIDOG_FIGURES = 1_721  # mitotic figures in the 150 annotated images (MIDOG 2021 training set)
MIDOG_IMAGE_PX = (7_000, 5_000)  # one 2 mm² region at 0.23-0.25 µm/px
CAMELYON16_RADBOUD_TRAIN_SLIDES, CAMELYON16_TRAIN_SLIDES = 170, 270  # of the 400: 270 train (170 Radboud), 130 test

# --tiny: the experiment configs at the test suite's shapes (tests/tiny_config.py): ViT-mu/8, 32-px tiles, 24-px
# views, small batches; every count (steps, tiles) stays the config's, only the costed shapes shrink.
TINY = {"model.variant": "mu/8", "model.projector_dims": (32, 32), "data.tile_size": 32, "data.crop_size": 24,
        "batch_size": 8, "eval.batch_size": 8, "dcgan.width": 4, "dcgan.batch_size": 4,
        "detection.batch_size": 8, "detection.hidden": 8, "wilds.finetune_batch_size": 8}


@dataclasses.dataclass(frozen=True)
class Item:
    """One line of a config's bill: `count` steps (or tiles) of `flops_each` FLOPs."""

    what: str
    kind: str  # "train" (steps) or "eval" (tiles forward)
    count: int
    flops_each: float
    costed: str  # which function's cost analysis gave flops_each

    @property
    def flops(self) -> float:
        return self.count * self.flops_each


def load_config(name: str, tiny: bool) -> ml_collections.ConfigDict:
    """configs/<name>.py's config as the command line loads it; with `tiny`, TINY's shapes."""
    config = runpy.run_path(str(REPO / "configs" / f"{name}.py"))["get_config"]()
    if tiny:
        config = with_values(config, {key: value for key, value in TINY.items() if key.split(".")[0] in config})
    return config


def _mesh() -> jax.sharding.Mesh:
    return parallel.make_mesh(1, 1, devices=jax.devices()[:1])


def _key() -> jax.ShapeDtypeStruct:
    return jax.eval_shape(lambda: jax.random.key(0))


def _sds(shape: Sequence[int], dtype: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def _flops(lowered: jax.stages.Lowered) -> float:
    flops = compiled_flops(lowered)
    if not flops:
        raise RuntimeError("XLA's cost analysis returned no FLOPs for a lowered step")
    return flops


def _trainer(config: ml_collections.ConfigDict) -> tuple[train.Trainer, dict]:
    trainer = train.make_trainer(config, _mesh())
    return trainer, train.abstract_state(trainer)


# Keys that change no shape or operation of the costed programs (data locations and splits, other modes' blocks,
# logging; the schedule's lengths, the seed and the terms' weights are scalar constants in them): configs equal but for these share one
# lowering (in --tiny most configs' steps are then the same program).
NOT_IN_PROGRAMS = ("mode", "resume", "init_from", "compilation_cache_dir", "seed", "num_steps", "dann.weight",
                   "supervised.weight",
                   "optimizer.warmup_steps", "data.name", "data.data_dir",
                   "data.manual_dir", "data.worker_count", "data.builder_config", "data.train_sites",
                   "data.val_region_fraction", "detection", "wilds", "lomo", "dcgan", "checkpoint",
                   "log_every_steps", "distributed")
_COSTS: dict[tuple[str, str], Any] = {}


def _memo(fn: Callable[..., Any], config: ml_collections.ConfigDict, *args: int) -> Any:
    """fn(config, *args), once per program: the key is `args` and the config without NOT_IN_PROGRAMS keys (of eval,
    its batch size only)."""
    values = config.to_dict()
    for dotted in NOT_IN_PROGRAMS:
        *parents, key = dotted.split(".")
        node = values
        for parent in parents:
            node = node.get(parent, {})
        node.pop(key, None)
    values["eval"] = {"batch_size": config.eval.batch_size}
    key = (fn.__name__, json.dumps([values, args], sort_keys=True, default=str))
    if key not in _COSTS:
        _COSTS[key] = fn(config, *args)
    return _COSTS[key]


def train_step_flops(config: ml_collections.ConfigDict) -> float:
    """FLOPs of one `train.compile_step` step of `config` (views, encoder, terms, AdamW) on its global batch."""
    return _memo(_train_step_flops, config)


def _train_step_flops(config: ml_collections.ConfigDict) -> float:
    trainer, state = _trainer(config)
    b, t = config.batch_size, config.data.tile_size
    batch = {"image": _sds((b, t, t, 3), jnp.uint8), "label": _sds((b,), jnp.int32), "site": _sds((b,), jnp.int32)}
    return _flops(train.compile_step(trainer).lower(state, batch, _key()))


def encoder_flops_per_tile(config: ml_collections.ConfigDict) -> float:
    """FLOPs per tile of the evaluation's encoder forward (`embed._encode`, centre crop) at eval.batch_size."""
    return _memo(_encoder_flops_per_tile, config)


def _encoder_flops_per_tile(config: ml_collections.ConfigDict) -> float:
    trainer, state = _trainer(config)
    b, t = config.eval.batch_size, config.data.tile_size
    lowered = embed._encode.lower(trainer.graphdef, state["params"], config.data.crop_size, _sds((b, t, t, 3), jnp.uint8))
    return _flops(lowered) / b


def _encoder(config: ml_collections.ConfigDict) -> tuple[nnx.GraphDef, nnx.State, Any]:
    trainer, state = _trainer(config)
    encoder = nnx.merge(trainer.graphdef, state["params"]).encoder
    return (*nnx.split(encoder), encoder)


def finetune_flops(config: ml_collections.ConfigDict, batch: int) -> tuple[float, float]:
    """(FLOPs of one `finetune.train_step` at `batch`, FLOPs per tile of its `predict_proba` at eval.batch_size)."""
    return _memo(_finetune_flops, config, batch)


def _finetune_flops(config: ml_collections.ConfigDict, batch: int) -> tuple[float, float]:
    encoder_def, encoder_params, encoder = _encoder(config)
    head_def, head_params = nnx.split(nnx.eval_shape(
        lambda: nnx.Linear(encoder.num_features, finetune.NUM_CLASSES, rngs=nnx.Rngs(params=0))))
    params = {"encoder": encoder_params, "head": head_params}
    spec = finetune.StepSpec(encoder_def, head_def, config.data.crop_size, 1e-4, 0.05, 1000)  # schedule: constants
    opt_state = jax.eval_shape(finetune.optimizer(spec).init, params)
    t, e = config.data.tile_size, config.eval.batch_size
    step = finetune.train_step.lower(params, opt_state, _sds((batch, t, t, 3), jnp.uint8), _sds((batch,), jnp.int32),
                                     spec=spec)
    proba = finetune.predict_proba.lower(params, _sds((e, t, t, 3), jnp.uint8), spec=spec)
    return _flops(step), _flops(proba) / e


def detection_flops(config: ml_collections.ConfigDict) -> tuple[float, float]:
    """(FLOPs of one head step on cached patch tokens, FLOPs per window of the heat-map forward `_score`), both at
    detection.batch_size on data.crop_size windows (the frozen-encoder default)."""
    d = config.detection
    encoder_def, encoder_params, encoder = _encoder(config)
    size, b = config.data.crop_size, d.batch_size
    head_def, head_params = nnx.split(nnx.eval_shape(lambda: DetectionHead(
        encoder.width, d.hidden, encoder.patch // d.heatmap_stride, rngs=nnx.Rngs(params=0))))
    spec = detection_fit.StepSpec(encoder_def, head_def, False, d.loss, (("gamma", d.focal_gamma),),
                                  (size // d.heatmap_stride,) * 2, d.heatmap_stride, d.learning_rate, d.weight_decay,
                                  d.num_steps)
    trainable = (head_params,)
    opt_state = jax.eval_shape(detection_fit._optimizer(spec).init, trainable)
    grid, k = size // encoder.patch, 4  # up to 4 figure centres per window (only the Gaussian targets depend on it)
    step = detection_fit._step.lower(trainable, opt_state, _sds((b, grid, grid, encoder.width), jnp.float32),
                                     _sds((b, k, 2), jnp.float32), _sds((b, k), jnp.bool_), _sds((b,), jnp.float32),
                                     spec=spec)
    score = detection_fit._score.lower((encoder_params, head_params), _sds((b, size, size, 3), jnp.uint8),
                                       encoder_def=encoder_def, head_def=head_def)
    return _flops(step), _flops(score) / b


def dcgan_flops(config: ml_collections.ConfigDict) -> tuple[float, float]:
    """(FLOPs of one `dcgan.train_step` at dcgan.batch_size on data.tile_size tiles, FLOPs per generated sample)."""
    cfg, t, classes = config.dcgan, config.data.tile_size, config.supervised.num_classes
    spec, create = dcgan._creator(classes, t, cfg.latent_dim, cfg.width)
    state = jax.eval_shape(create, _sds((), jnp.uint32), _sds((), jnp.float32))
    b, chunk = cfg.batch_size, dcgan._SAMPLE_CHUNK
    step = dcgan.train_step.lower(state, _sds((b, t, t, 3), jnp.uint8), _sds((b,), jnp.int32), _key(), spec=spec)
    sample = dcgan._generate.lower(state["g"], state["g_stats"], _sds((chunk, cfg.latent_dim), jnp.float32),
                                   _sds((chunk,), jnp.int32), g_def=spec.g_def)
    return _flops(step), _flops(sample) / chunk


def _padded(tiles: float, batch: int) -> int:
    """Tiles embedded in padded batches of `batch` (the last batch is padded to full size)."""
    return int(math.ceil(tiles / batch) * batch)


# ------------------------------------------------------------------------------------------------ the configs


def camelyon16(config: ml_collections.ConfigDict) -> tuple[list[Item], list[str]]:
    """mode=train: LMC and each trained reference, then the embedding evaluation of every encoder row."""
    items = []
    for name in (methods.LMC, *methods.trained_references(config)):
        cfg = methods.training_config(config, name)
        items.append(Item(f"{name} pre-training", "train", cfg.num_steps, train_step_flops(cfg), "train.compile_step"))
    ev = config.eval
    cap = ev.max_split_tiles
    source = cap * CAMELYON16_RADBOUD_TRAIN_SLIDES / CAMELYON16_TRAIN_SLIDES if ev.source_only else cap
    encoders = [methods.LMC, *(n for n in ev.references if n != methods.RAW_COLOUR)]
    rows = len(encoders) + len(ev.normalizers) * len([n for n in ev.normalizer_encoders if n in encoders])
    per_row = _padded(source, ev.batch_size) + _padded(cap, ev.batch_size)
    items.append(Item(f"evaluation: {rows} encoder rows × {per_row:,} tiles", "eval", rows * per_row,
                      encoder_flops_per_tile(config), "embed._encode"))
    notes = [f"Camelyon16: each split holds more than eval.max_split_tiles={cap:,} tiles; the source split keeps "
             f"the Radboud share ({CAMELYON16_RADBOUD_TRAIN_SLIDES}/{CAMELYON16_TRAIN_SLIDES} training slides, equal "
             f"tiles per slide assumed): {source:,.0f} + {cap:,} test tiles per row; rows: {', '.join(encoders)} and "
             f"{len(ev.normalizers)} normalisers × {len(ev.normalizer_encoders)} encoders"]
    return items, notes


def midog(config: ml_collections.ConfigDict) -> tuple[list[Item], list[str]]:
    """mode=detection: LMC and the rows' encoders, then per row a head on cached tokens and whole-image heat maps."""
    from lmc_jax.detection import experiment

    d = config.detection
    items = []
    for name in dict.fromkeys([methods.LMC, *experiment.trained_encoders(d.rows)]):
        cfg = config if name == methods.LMC else methods.training_config(config, name)
        items.append(Item(f"{name} pre-training", "train", cfg.num_steps, train_step_flops(cfg), "train.compile_step"))
    step, window = detection_flops(config)
    rows, size = len(d.rows), config.data.crop_size
    test = round(d.test_fraction * MIDOG_IMAGES_PER_SCANNER)
    source = MIDOG_IMAGES_PER_SCANNER - test
    val = round(d.val_fraction * source)
    figures = MIDOG_FIGURES / (MIDOG_IMAGES_PER_SCANNER * MIDOG_ANNOTATED_SCANNERS)
    train_windows = (source - val) * (d.negatives_per_image + figures * (1 + d.jitter_per_truth))
    per_image = math.ceil(MIDOG_IMAGE_PX[0] / size) * math.ceil(MIDOG_IMAGE_PX[1] / size)
    heat_images = val + test * MIDOG_ANNOTATED_SCANNERS
    items += [
        Item(f"detection heads: {rows} rows", "train", rows * d.num_steps, step, "detection.fit._step (head only)"),
        Item(f"token cache: {rows} rows × {train_windows:,.0f} training windows", "eval",
             rows * _padded(train_windows, d.batch_size), window, "detection.fit._score (encoder + head; bound)"),
        Item(f"heat maps: {rows} rows × {heat_images} images × {per_image:,} windows", "eval",
             rows * heat_images * _padded(per_image, d.batch_size), window, "detection.fit._score")]
    notes = [f"MIDOG: {MIDOG_ANNOTATED_SCANNERS} annotated scanners × {MIDOG_IMAGES_PER_SCANNER} images of "
             f"{MIDOG_IMAGE_PX[0]:,} × {MIDOG_IMAGE_PX[1]:,} px; {test} test images per scanner, {source - val} train "
             f"+ {val} validation images of the source; {figures:.1f} mitotic figures per image "
             f"({MIDOG_FIGURES:,}/150); training windows per image: figures × (1 + jitter_per_truth) + "
             f"negatives_per_image (figures' own grid windows counted as one each); the token cache is costed with "
             f"the heat-map forward (encoder + head), an upper bound of the encoder alone"]
    return items, notes


def wilds(config: ml_collections.ConfigDict) -> tuple[list[Item], list[str]]:
    """mode=wilds: per seed LMC pre-training, the probe's embeddings, fine-tuning with its selection passes."""
    w, ev = config.wilds, config.eval
    seeds = len(w.seeds)
    capped = {s: min(n, ev.max_split_tiles or n) for s, n in WILDS_SPLITS.items()}
    step, proba = finetune_flops(config, w.finetune_batch_size)
    candidates = len(finetune.checkpoint_steps(w.finetune_steps, w.finetune_eval_every))
    probe_tiles = sum(_padded(capped[s], ev.batch_size) for s in dict.fromkeys([w.probe_split, *w.eval_splits]))
    select_tiles = candidates * _padded(capped[w.finetune_select_split], ev.batch_size)
    final_tiles = sum(_padded(capped[s], ev.batch_size) for s in w.eval_splits)
    items = [Item(f"LMC pre-training: {seeds} seeds", "train", seeds * config.num_steps, train_step_flops(config),
                  "train.compile_step"),
             Item(f"fine-tuning: {seeds} seeds", "train", seeds * w.finetune_steps, step, "finetune.train_step"),
             Item(f"probe embeddings: {seeds} seeds × {probe_tiles:,} tiles", "eval", seeds * probe_tiles,
                  encoder_flops_per_tile(config), "embed._encode"),
             Item(f"fine-tune selection and scoring: {seeds} seeds × {select_tiles + final_tiles:,} tiles", "eval",
                  seeds * (select_tiles + final_tiles), proba, "finetune.predict_proba")]
    notes = [f"Camelyon17-WILDS: splits {', '.join(f'{s} {n:,}' for s, n in WILDS_SPLITS.items())} (public sizes), "
             f"each capped at eval.max_split_tiles={ev.max_split_tiles:,}; {candidates} fine-tune candidates scored "
             f"on {w.finetune_select_split}"]
    return items, notes


def breakhis(config: ml_collections.ConfigDict) -> tuple[list[Item], list[str]]:
    """mode=lomo: per fold (held-out magnification) every model of config.lomo.models with its model selection."""
    c, ev = config.lomo, config.eval
    folds = list(c.held_out) or list(BREAKHIS_IMAGES)
    total = sum(BREAKHIS_IMAGES.values())
    train_tiles = {m: BREAKHIS_TRAIN_SHARE * (total - BREAKHIS_IMAGES[m]) for m in folds}  # fit + val, other sites
    val_tiles = {m: config.data.val_region_fraction * n for m, n in train_tiles.items()}
    test_tiles = {m: (1 - BREAKHIS_TRAIN_SHARE) * BREAKHIS_IMAGES[m] for m in folds}
    roles = sum(_padded(train_tiles[m] - val_tiles[m], ev.batch_size) + _padded(val_tiles[m], ev.batch_size)
                + _padded(test_tiles[m], ev.batch_size) for m in folds)  # fit + val + test embedded, all folds
    candidates = len(finetune.checkpoint_steps(config.num_steps, max(1, config.num_steps // c.candidates)))
    forward = encoder_flops_per_tile(config)
    n = len(folds)
    trained = {"baseline": lomo._supervised(config),
               "dcgan": lomo._supervised(config, **{"dcgan.ratio": c.dcgan_ratio}),
               "domain_general": lomo._supervised(config, objectives=("supervised", "dann"),
                                                  **{"dann.domain_field": "site",
                                                     "dann.num_domains": len(BREAKHIS_IMAGES)}),
               "lmc": config, "lmc_scale": with_values(config, {"lmc.scale.views": True})}
    items = []
    for name, cfg in trained.items():  # lmc_finetune starts from the fold's lmc run, trained for it if not listed
        if name in c.models or (name == "lmc" and "lmc_finetune" in c.models):
            items.append(Item(f"{name}: {n} folds", "train", n * cfg.num_steps, train_step_flops(cfg),
                              "train.compile_step"))
        if name in c.models:
            items.append(Item(f"{name} selection: {n} folds × {candidates} checkpoints", "eval", candidates * roles,
                              forward, "embed._encode"))
    if "dcgan" in c.models:
        step, sample = dcgan_flops(config)
        fd = 5 * dcgan._FD_MAX_SAMPLES  # real + fake overall, per class (same rows), real halves
        items += [Item(f"DCGAN: {n} folds", "train", n * config.dcgan.num_steps, step, "dcgan.train_step"),
                  Item(f"DCGAN bank + BatchNorm recalibration: {n} folds", "eval",
                       n * (_padded(config.dcgan.bank_size, dcgan._SAMPLE_CHUNK) + dcgan._RECALIBRATION_SIZE), sample,
                       "dcgan._generate"),
                  Item(f"DCGAN Fréchet distances on the baseline's encoder: {n} folds", "eval", n * fd, forward,
                       "embed._encode")]
    if "lmc_finetune" in c.models:
        step, proba = finetune_flops(config, config.batch_size)
        tuned = len(finetune.checkpoint_steps(c.finetune_steps, max(1, c.finetune_steps // c.candidates)))
        val = sum(_padded(val_tiles[m], ev.batch_size) for m in folds)
        test = sum(_padded(test_tiles[m], ev.batch_size) for m in folds)
        items += [Item(f"lmc_finetune: {n} folds", "train", n * c.finetune_steps, step, "finetune.train_step"),
                  Item(f"lmc_finetune selection and scoring: {n} folds × {tuned} candidates", "eval",
                       tuned * val + val + test + roles, proba, "finetune.predict_proba (encoder features: bound)")]
    notes = [f"BreaKHis: {total:,} images ({', '.join(f'{m} {k:,}' for m, k in BREAKHIS_IMAGES.items())}), one "
             f"tile each; train split = {BREAKHIS_TRAIN_SHARE:.0%} of the images (the builder splits 70/30 by "
             f"patient), validation {config.data.val_region_fraction:.0%} of it; per fold fit + validation tiles of "
             f"the other magnifications and test tiles of the held-out one embedded for each of {candidates} saved "
             f"checkpoints; raw_colour_stats costs no accelerator time"]
    return items, notes


BILLS: dict[str, Callable[[ml_collections.ConfigDict], tuple[list[Item], list[str]]]] = {
    "camelyon16_crossbatch": camelyon16, "midog_detection": midog, "camelyon17_wilds": wilds,
    "breakhis_lomo": breakhis}


def reference_mfu(batch: int = 8) -> dict[str, float]:
    """NVIDIA's ViT-B/16 reference (1,459 img/s per H100) as MFU: the FLOPs per image of our supervised ViT-B/16
    224-px 1000-way classifier step (one view, AdamW) × that rate / the H100's 989 TFLOP/s."""
    config = runpy.run_path(str(REPO / "configs" / "default.py"))["get_config"]()
    config = with_values(config, {"model.variant": "B/16", "data.tile_size": 224, "data.crop_size": 224,
                                  "batch_size": batch, "objectives": ("supervised",), "lmc.num_views": 1,
                                  "lmc.stain_views": False, "supervised.num_classes": 1000})
    per_image = train_step_flops(config) / batch
    return {"flops_per_image": per_image,
            "mfu": NVIDIA_VIT_B16_IMAGES_PER_S * per_image / PEAK_FLOPS_BF16["NVIDIA H100"]}


def estimate(name: str, tiny: bool) -> dict[str, Any]:
    """The bill of config `name`: its items, training and evaluation FLOPs, and hours per device and MFU."""
    config = load_config(name, tiny)
    items, notes = BILLS[name](config)
    flops = {kind: sum(i.flops for i in items if i.kind == kind) for kind in ("train", "eval")}
    total = flops["train"] + flops["eval"]
    hours = {device: {f"{u:.0%}": seconds_at(total, peak, u) / 3600 for u in UTILISATIONS}
             for device, peak in HARDWARE.items()}
    return {"model": f"ViT-{config.model.variant}", "items": [dataclasses.asdict(i) | {"flops": i.flops} for i in items],
            "train_flops": flops["train"], "eval_flops": flops["eval"], "total_flops": total, "hours": hours,
            "notes": notes}


def _hours(h: float) -> str:
    minutes = h * 60
    return f"{minutes:.1f} min" if minutes < 10 else f"{minutes:.0f} min" if h < 1 else f"{h:.1f} h"


def markdown(result: dict[str, Any]) -> str:
    """The summary table (one row per config), each config's bill, and the assumptions."""
    devices = list(HARDWARE)
    us = [f"{u:.0%}" for u in UTILISATIONS]
    head = ["config", "model", "training FLOPs", "evaluation FLOPs", *(f"{d} @ {u} MFU" for d in devices for u in us)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * 2 + " ---: |" * (len(head) - 2)]
    for name, e in result["configs"].items():
        cells = [_hours(e["hours"][d][u]) for d in devices for u in us]
        lines.append(f"| {name} | {e['model']} | {e['train_flops']:.3g} | {e['eval_flops']:.3g} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| config | item | count | FLOPs each | FLOPs | costed with |", "| --- | --- | ---: | ---: | ---: | --- |"]
    for name, e in result["configs"].items():
        for i in e["items"]:
            unit = "steps" if i["kind"] == "train" else "tiles"
            lines.append(f"| {name} | {i['what']} | {i['count']:,} {unit} | {i['flops_each']:.3g} | {i['flops']:.3g} "
                         f"| {i['costed']} |")
    ref = result.get("reference")
    lines += ["", "Assumptions:"]
    if ref:
        lines.append(f"- 16% MFU: NVIDIA's JAX ViT-B/16 reference, {NVIDIA_VIT_B16_IMAGES_PER_S:,.0f} img/s per H100; "
                     f"our ViT-B/16 classifier step costs {ref['flops_per_image']:.3g} FLOPs per image, so that rate "
                     f"is {ref['mfu']:.1%} of 989 TFLOP/s. That is 197 tokens per image; a ViT-S/16 view of 96 px "
                     "(Camelyon16, WILDS) has 37 and of 112 px (MIDOG) 50, narrower matmuls that may run below it.")
    lines += [f"- {note}." for e in result["configs"].values() for note in e["notes"]]
    lines.append("- Accelerator time only, at the stated MFU: compilation, host work (data building, stain "
                 "normalisers, probes, the metric suite), checkpoints and input stalls are not counted.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (ViT-mu/8, 32-px tiles): the test suite")
    parser.add_argument("--out", default=os.environ.get("OUT") or "config_runtime_out")
    parser.add_argument("--configs", nargs="*", default=CONFIGS, choices=CONFIGS)
    args = parser.parse_args(argv)
    result = {"date": str(datetime.date.today()), "machine": cpu_model(), "jax": jax.__version__,
              "tiny": args.tiny, "hardware_flops_per_s": HARDWARE, "utilisations": list(UTILISATIONS),
              "reference": None if args.tiny else reference_mfu(),
              "configs": {name: estimate(name, args.tiny) for name in args.configs}}
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config_runtime.json").write_text(json.dumps(result, indent=2, allow_nan=False))
    table = markdown(result)
    (out / "config_runtime.md").write_text(table)
    print(f"{result['date']}, {result['machine']}, jax {result['jax']}{' (--tiny)' if args.tiny else ''}")
    print(table)
    return result


if __name__ == "__main__":
    main()
