"""LMC training: train state on a mesh, the jitted step, and the loop with checkpoints and logs.

With `config.dann.enabled` the same step trains the DANN baseline: Barlow Twins plus a domain head
that sees the encoder features through gradient reversal (see `loss_and_metrics`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Any, Callable

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from data_pipelines import input_pipeline
from lmc_jax import parallel
from lmc_jax.checkpoint import CheckpointError, Checkpointer, abstract_like
from lmc_jax.export.load import apply_init_from
from lmc_jax.losses import dann_schedule, domain_adversarial_loss, grad_reverse, lmc_loss
from lmc_jax.models.vit import build_model
from lmc_jax.preemption import Preempted, PreemptionWatch
from lmc_jax.stain.augment import StainAugConfig, make_views
from lmc_jax.throughput import compiled_flops, mfu
from lmc_jax.writers import MetricWriter

State = dict[str, Any]  # {"step": int32, "params": pure dict, "opt_state": optax state[, "ema_params"]}

DANN_RENDERING_STREAM = 0x44414E4E
"""fold_in tag ("DANN") of the key of DANN's stain rendering: independent of the K views' keys (0 … K−1)."""


@dataclasses.dataclass(frozen=True)
class Trainer:
    """Everything a step needs that is not an array: the model graph, optimizer and shardings."""

    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    state_shardings: State

    @property
    def image_shape(self) -> tuple[int, int, int]:
        tile = self.config.data.tile_size
        return (tile, tile, 3)


def _decay_mask(params: dict) -> dict:
    """Weight decay on matrices and conv kernels only (not biases, norms, tokens, position embeddings)."""
    def decide(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and name not in ("pos_embed", "cls_token")
    return jax.tree_util.tree_map_with_path(decide, params)


def make_optimizer(config: ml_collections.ConfigDict) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """AdamW with linear warm-up and cosine decay, optional global-norm clipping."""
    opt = config.optimizer
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=opt.learning_rate,
        warmup_steps=opt.warmup_steps,
        decay_steps=config.num_steps,
        end_value=opt.learning_rate * 1e-2,
    )
    parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm > 0 else []
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=_decay_mask))
    return optax.chain(*parts), schedule


def dann_enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether the run trains the DANN domain head; run configs written before DANN existed have no `dann` block."""
    return "dann" in config and bool(config.dann.enabled)


def _model_factory(config: ml_collections.ConfigDict) -> Callable[[], nnx.Module]:
    head_dims = tuple(config.dann.hidden_dims) if dann_enabled(config) else None
    return lambda: build_model(config.model, config.data.crop_size, seed=config.seed, domain_head_dims=head_dims)


def make_trainer(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> Trainer:
    """Shapes the state abstractly, derives its FSDP shardings; allocates nothing."""
    tx, schedule = make_optimizer(config)
    graphdef, abstract_params = nnx.split(nnx.eval_shape(_model_factory(config)), nnx.Param)
    abstract_params = nnx.to_pure_dict(abstract_params)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    shardings = dict(
        step=parallel.replicated(mesh),
        params=parallel.param_shardings(abstract_params, mesh, config.mesh.fsdp_min_size),
        opt_state=parallel.param_shardings(abstract_opt, mesh, config.mesh.fsdp_min_size),
    )
    if config.optimizer.ema_decay > 0:
        shardings["ema_params"] = shardings["params"]
    return Trainer(config, mesh, graphdef, tx, schedule, shardings)


def _init_fn(trainer: Trainer) -> Callable[[], State]:
    factory = _model_factory(trainer.config)

    def init() -> State:
        params = nnx.to_pure_dict(nnx.split(factory(), nnx.Param)[1])
        state = dict(step=jnp.zeros((), jnp.int32), params=params, opt_state=trainer.tx.init(params))
        if trainer.config.optimizer.ema_decay > 0:
            state["ema_params"] = jax.tree.map(jnp.copy, params)
        return state

    return init


def init_state(trainer: Trainer) -> State:
    """Initial parameters and optimizer state, created directly in their sharded layout."""
    return jax.jit(_init_fn(trainer), out_shardings=trainer.state_shardings)()


def abstract_state(trainer: Trainer) -> State:
    """ShapeDtypeStructs with the target shardings: the restore target for a checkpoint."""
    return abstract_like(jax.eval_shape(_init_fn(trainer)), trainer.state_shardings)


def training_views(key: jax.Array, tiles: jax.Array, config: ml_collections.ConfigDict) -> jax.Array:
    """The K views [K, B, C, C, 3] of uint8 tiles; with DANN, one training-family stain rendering is appended.

    The rendering (index K) draws from key fold_in(key, DANN_RENDERING_STREAM), so the K views are the same
    with and without DANN.
    """
    stain = StainAugConfig.from_config(config.lmc.stain) if config.lmc.stain_views else None
    views = make_views(
        key, tiles, num_views=config.lmc.num_views, crop_size=config.data.crop_size, stain=stain
    )
    if not dann_enabled(config):
        return views
    rendering = make_views(
        jax.random.fold_in(key, DANN_RENDERING_STREAM), tiles, num_views=1, crop_size=config.data.crop_size,
        stain=StainAugConfig.from_config(config.lmc.stain),
    )
    return jnp.concatenate([views, rendering])


def domain_terms(
    head: nnx.Module, source: jax.Array, shifted: jax.Array, reversal: jax.Array
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DANN's domain loss: `head` tells source features [B, W] (label 0) from stain-shifted ones (label 1).

    The head sees grad_reverse(features, reversal): it descends the loss, the encoder ascends it × reversal.
    """
    features = jnp.stack([source, shifted])  # [2, B, W]
    labels = jnp.broadcast_to(jnp.arange(2, dtype=jnp.float32)[:, None], features.shape[:2])
    logits = head(grad_reverse(features, reversal))
    loss = domain_adversarial_loss(logits, labels)
    accuracy = jnp.mean(((logits > 0) == (labels > 0.5)).astype(jnp.float32))
    return loss, dict(dann_loss=loss, dann_lambda=jnp.asarray(reversal, jnp.float32), dann_accuracy=accuracy)


def loss_and_metrics(
    params: dict,
    graphdef: nnx.GraphDef,
    tiles: jax.Array,
    key: jax.Array,
    config: ml_collections.ConfigDict,
    step: jax.Array | int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """LMC loss of one global batch of uint8 tiles: K views on device → encoder → projector → loss.

    With DANN, one encoder pass also embeds the stain rendering; view 0 (label 0) and the rendering
    (label 1) feed the domain head through gradient reversal with λ_p = dann_schedule(step / num_steps),
    and the loss adds dann.weight × the domain loss. `step` (traced) is needed only then.
    """
    if dann_enabled(config) and step is None:
        raise ValueError("loss_and_metrics: config.dann.enabled needs the training step (step=) for λ_p")
    views = training_views(key, tiles, config)
    model = nnx.merge(graphdef, params)
    if not dann_enabled(config):
        return lmc_loss(model(views), config.lmc.off_diagonal_weight)
    features = model.embed(views)  # [K + 1, B, W]
    loss, terms = lmc_loss(model.projector(features[:-1]), config.lmc.off_diagonal_weight)
    reversal = dann_schedule(jnp.asarray(step, jnp.float32) / config.num_steps, config.dann.gamma)
    domain_loss, dann_metrics = domain_terms(model.domain_head, features[0], features[-1], reversal)
    return loss + config.dann.weight * domain_loss, {**terms, **dann_metrics}


def _accumulated_grads(trainer: Trainer, params: dict, tiles: jax.Array, key: jax.Array,
                       step: jax.Array | None = None):
    """Loss, terms and gradients averaged over `grad_accum_steps` micro-batches (one pass when 1).

    Micro-batch m takes every A-th example (strided), so each one stays spread over all devices.
    The cross-correlation is then normalised per micro-batch: the loss is the mean of micro-batch losses.
    `step` (the state's, traced) reaches the loss for DANN's λ_p.
    """
    config = trainer.config
    grad_fn = jax.value_and_grad(
        functools.partial(loss_and_metrics, graphdef=trainer.graphdef, config=config, step=step), has_aux=True
    )
    accum = config.optimizer.grad_accum_steps
    if accum == 1:
        return grad_fn(params, tiles=tiles, key=key)
    micro = jnp.swapaxes(tiles.reshape(tiles.shape[0] // accum, accum, *tiles.shape[1:]), 0, 1)
    micro = jax.lax.with_sharding_constraint(
        micro, jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec(None, parallel.BATCH_AXES))
    )

    def body(carry, xs):
        index, micro_tiles = xs
        out = grad_fn(params, tiles=micro_tiles, key=jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, out), None

    shapes = jax.eval_shape(lambda p, t, k: grad_fn(p, tiles=t, key=k), params, micro[0], key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
    return jax.tree.map(lambda x: x / accum, total)


def train_step(trainer: Trainer, state: State, tiles: jax.Array, base_key: jax.Array) -> tuple[State, dict]:
    """One AdamW step (+ EMA of the weights when enabled); the augmentation key is folded from (seed, step)."""
    key = jax.random.fold_in(base_key, state["step"])
    (loss, terms), grads = _accumulated_grads(trainer, state["params"], tiles, key, state["step"])
    updates, opt_state = trainer.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(loss=loss, **terms, grad_norm=optax.tree.norm(grads), learning_rate=trainer.schedule(state["step"]))
    new_state = dict(step=state["step"] + 1, params=params, opt_state=opt_state)
    if "ema_params" in state:
        decay = trainer.config.optimizer.ema_decay
        new_state["ema_params"] = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema_params"], params)
    return new_state, metrics


def compile_step(trainer: Trainer) -> Callable[[State, jax.Array, jax.Array], tuple[State, dict]]:
    """`train_step` jitted over the mesh: state donated, batch sharded over (data, fsdp)."""
    batch = parallel.batch_sharding(trainer.mesh, 4)
    return jax.jit(
        functools.partial(train_step, trainer),
        in_shardings=(trainer.state_shardings, batch, parallel.replicated(trainer.mesh)),
        out_shardings=(trainer.state_shardings, parallel.replicated(trainer.mesh)),
        donate_argnums=(0,),
    )


def _check_finite(metrics: dict[str, float], step: int) -> None:
    bad = [name for name, value in metrics.items() if not np.isfinite(value)]
    if bad:
        raise FloatingPointError(
            f"step {step}: {', '.join(f'{n}={metrics[n]}' for n in bad)} is not finite; training stopped "
            "without checkpointing this state. Lower optimizer.learning_rate or check the input data."
        )


def _restore_or_init(trainer: Trainer, checkpointer: Checkpointer, data_iter, workdir: epath.Path) -> tuple[State, dict]:
    """Resume is the default: newest restorable checkpoint in the workdir, else `init_from` weights, else scratch."""
    if trainer.config.resume:
        restored = checkpointer.restore_latest(abstract_state(trainer), data_iter)
        if restored is not None:
            step, state, meta = restored
            logging.info("resumed %s from step %d", workdir, step)
            return state, meta
    return apply_init_from(trainer.config, init_state(trainer), trainer.state_shardings), {}


def train(config: ml_collections.ConfigDict, workdir: epath.PathLike, mesh: jax.sharding.Mesh | None = None) -> State:
    """Trains from scratch or resumes from `workdir/checkpoints`; returns the final state.

    SIGTERM makes it checkpoint the step in progress and raise `Preempted`; a non-finite metric
    raises FloatingPointError before that state is saved.
    """
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    trainer = make_trainer(config, mesh)
    data_iter = input_pipeline.make_train_iterator(
        config, config.data.data_dir, process_index=jax.process_index(), process_count=jax.process_count()
    )
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep)
    state, meta = _restore_or_init(trainer, checkpointer, data_iter, workdir)
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    base_key = jax.random.key(config.seed)
    start = int(state["step"])
    writer = MetricWriter(workdir, total_steps=config.num_steps)
    preemption = PreemptionWatch()
    images_seen = meta.get("images_seen", 0)
    step_fn, flops = None, None
    tick, tick_step = time.perf_counter(), start
    try:
        for step in range(start, config.num_steps):
            tiles = parallel.host_to_global({"image": next(data_iter)["image"]}, mesh)["image"]
            if step_fn is None:  # compile once, read the FLOPs of the compiled step for MFU
                step_fn = compile_step(trainer).lower(state, tiles, base_key).compile()
                flops = compiled_flops(step_fn)
            state, metrics = step_fn(state, tiles, base_key)
            images_seen += config.batch_size
            done = step + 1
            writer.progress(done, metrics)
            if done % config.log_every_steps == 0 or done == config.num_steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(values, done)
                elapsed = time.perf_counter() - tick
                seconds_per_step = elapsed / max(done - tick_step, 1)
                values["images_per_sec"] = config.batch_size / max(seconds_per_step, 1e-9)
                values["step_time_sec"] = seconds_per_step
                values["eta_sec"] = (config.num_steps - done) * seconds_per_step
                utilisation = mfu(flops, seconds_per_step, jax.devices()[0])
                if utilisation is not None:
                    values["mfu"] = utilisation
                writer.write(done, values)
                tick, tick_step = time.perf_counter(), done
            preempted = preemption.requested()
            if preempted or done % config.checkpoint.every_steps == 0 or done == config.num_steps:
                _check_finite({"loss": float(jax.device_get(metrics["loss"]))}, done)
                checkpointer.save(done, state, data_iter, {"step": done, "images_seen": images_seen})
            if preempted:
                raise Preempted(done)
    finally:  # on any exit, finish the saves already started: they are complete states
        preemption.close()
        checkpointer.close()
        writer.close()
    return state


def read_run_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
    """The config a training run wrote to `workdir/config.json` (what rebuilds its model)."""
    path = epath.Path(workdir) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: expected the workdir of a training run "
                              "(`python -m lmc_jax.main` writes config.json beside checkpoints/).")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_params(config: ml_collections.ConfigDict, workdir: epath.PathLike, mesh: jax.sharding.Mesh) -> tuple[
    nnx.GraphDef, dict, int]:
    """Newest checkpoint of a finished run: (graphdef, params, step); errors name the directory."""
    directory = epath.Path(workdir) / "checkpoints"
    trainer = make_trainer(config, mesh)
    checkpointer = Checkpointer(directory, async_save=False)
    steps = checkpointer.all_steps()
    if not steps:
        raise CheckpointError(
            f"no checkpoint in {directory}: train first (python -m lmc_jax.main --config ... --workdir "
            f"{epath.Path(workdir)}) or point eval.checkpoint at a trained workdir"
        )
    state, _ = checkpointer.restore(steps[-1], abstract_state(trainer))
    checkpointer.close()
    return trainer.graphdef, state["params"], steps[-1]


def initial_params(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, dict]:
    """Untrained parameters (the 'untrained' reference), same seed as training."""
    trainer = make_trainer(config, mesh)
    return trainer.graphdef, init_state(trainer)["params"]
