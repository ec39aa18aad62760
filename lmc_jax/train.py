"""Training: train state on a mesh, the jitted step, and the loop with checkpoints and logs.

The step's loss is the sum of the terms `config.objectives` names (`lmc_jax.objectives`): LMC is the
cross-correlation term alone, the DANN baseline adds the adversarial domain term.

The loop never checkpoints a diverged state: before every save the whole state must be finite and its
largest weight (params, EMA) at most `DIVERGENCE_FACTOR` × max(1, the run's largest weight at
initialisation), a config-free bound that healthy AdamW runs stay far below (their weights move by about
the learning rate per step) and that a blown-up run crosses within a step or two. A diverged loss or state
raises `DivergedError` naming the step, the newest (good) checkpoint and the fix. The workdir is held by
`lmc_jax.workdir` for the whole run (lock, config check, `resume=False` moves the old run aside).
"""

from __future__ import annotations

import dataclasses
import functools
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
from jax.experimental import multihost_utils

from data_pipelines import input_pipeline
from lmc_jax import objectives, parallel, workdir as workdir_lib
from lmc_jax.checkpoint import Checkpointer, abstract_like
from lmc_jax.errors import DivergedError, UserError
from lmc_jax.export.load import apply_init_from
from lmc_jax.models.vit import build_model
from lmc_jax.optim import make_optimizer
from lmc_jax.preemption import Preempted, PreemptionWatch
from lmc_jax.throughput import compiled_flops, mfu
from lmc_jax.writers import MetricWriter

State = dict[str, Any]  # {"step": int32, "params": pure dict, "opt_state": optax state[, "ema_params"]}
Batch = dict[str, jax.Array]  # a global train batch: image uint8 [B, T, T, 3]; label, site int64 [B] (-1 = none)
BATCH_KEYS = ("image", "label", "site")  # what the loop puts on the device: the terms read labels and sites
DIVERGENCE_FACTOR = 1e3  # diverged: max |weight| > DIVERGENCE_FACTOR × max(1, max |weight| at initialisation)


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


def _model_factory(config: ml_collections.ConfigDict) -> Callable[[], nnx.Module]:
    """Encoder, projector and the heads of the run's objective terms, from the run's seed."""
    heads = objectives.heads(config)
    return lambda: build_model(config.model, config.data.crop_size, seed=config.seed, heads=heads)


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


def state_signature(config: ml_collections.ConfigDict) -> list[tuple[str, tuple, str]]:
    """(path, shape, dtype) of every leaf of the train state `config` builds, allocating nothing: what a
    checkpoint of the run must match (`lmc_jax.workdir` compares it across configs)."""
    trainer = make_trainer(config, parallel.make_mesh(1, 1, devices=jax.local_devices()[:1]))
    leaves = jax.tree_util.tree_flatten_with_path(jax.eval_shape(_init_fn(trainer)))[0]
    return [(jax.tree_util.keystr(path), tuple(leaf.shape), str(leaf.dtype)) for path, leaf in leaves]


def loss_and_metrics(
    params: dict,
    graphdef: nnx.GraphDef,
    batch: Batch,
    key: jax.Array,
    config: ml_collections.ConfigDict,
    step: jax.Array | int,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The objective on one global batch: K views of its uint8 `image` (+ the terms' renderings) on device → one
    encoder pass → the sum of `config.objectives`' terms, which may read the batch's `label` and `site`. `step`
    (traced) gives the progress p = step / num_steps that scheduled terms (DANN's λ_p) read."""
    views, counts = objectives.views(key, batch["image"], config)
    model = nnx.merge(graphdef, params)
    features = objectives.split_features(model.embed(views), config.lmc.num_views, counts)
    progress = jnp.asarray(step, jnp.float32) / config.num_steps
    return objectives.loss(model, features, batch, progress, config)


def _accumulated_grads(trainer: Trainer, params: dict, batch: Batch, key: jax.Array,
                       step: jax.Array | int):
    """Loss, terms and gradients averaged over `grad_accum_steps` micro-batches (one pass when 1).

    Micro-batch m takes every A-th example (strided), so each one stays spread over all devices.
    The cross-correlation is then normalised per micro-batch: the loss is the mean of micro-batch losses.
    `step` (the state's, traced) reaches the loss for scheduled terms.
    """
    config = trainer.config
    grad_fn = jax.value_and_grad(
        functools.partial(loss_and_metrics, graphdef=trainer.graphdef, config=config, step=step), has_aux=True
    )
    accum = config.optimizer.grad_accum_steps
    if accum == 1:
        return grad_fn(params, batch=batch, key=key)
    strided = lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1)  # noqa: E731
    micro = jax.lax.with_sharding_constraint(
        jax.tree.map(strided, batch),
        jax.sharding.NamedSharding(trainer.mesh, jax.sharding.PartitionSpec(None, parallel.BATCH_AXES)),
    )

    def body(carry, xs):
        index, micro_batch = xs
        out = grad_fn(params, batch=micro_batch, key=jax.random.fold_in(key, index))
        return jax.tree.map(jnp.add, carry, out), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda p, b, k: grad_fn(p, batch=b, key=k), params, first, key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    total, _ = jax.lax.scan(body, zeros, (jnp.arange(accum), micro))
    return jax.tree.map(lambda x: x / accum, total)


def train_step(trainer: Trainer, state: State, batch: Batch, base_key: jax.Array) -> tuple[State, dict]:
    """One AdamW step (+ EMA of the weights when enabled); the augmentation key is folded from (seed, step)."""
    key = jax.random.fold_in(base_key, state["step"])
    (loss, terms), grads = _accumulated_grads(trainer, state["params"], batch, key, state["step"])
    updates, opt_state = trainer.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(loss=loss, **terms, grad_norm=optax.tree.norm(grads), learning_rate=trainer.schedule(state["step"]))
    new_state = dict(step=state["step"] + 1, params=params, opt_state=opt_state)
    if "ema_params" in state:
        decay = trainer.config.optimizer.ema_decay
        new_state["ema_params"] = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state["ema_params"], params)
    return new_state, metrics


def compile_step(trainer: Trainer) -> Callable[[State, jax.Array, jax.Array], tuple[State, dict]]:
    """`train_step` jitted over the mesh: state donated, every array of the batch split over (data, fsdp)."""
    batch = parallel.batch_sharding(trainer.mesh, 1)  # the leading axis; the rest of each array replicated
    return jax.jit(
        functools.partial(train_step, trainer),
        in_shardings=(trainer.state_shardings, batch, parallel.replicated(trainer.mesh)),
        out_shardings=(trainer.state_shardings, parallel.replicated(trainer.mesh)),
        donate_argnums=(0,),
    )


@jax.jit
def _state_health(state: State) -> tuple[jax.Array, jax.Array]:
    """(every float leaf finite, max |weight| over params and EMA) of a state, on device."""
    floats = [leaf for leaf in jax.tree.leaves(state) if jnp.issubdtype(leaf.dtype, jnp.floating)]
    weights = jax.tree.leaves([state[k] for k in ("params", "ema_params") if k in state])
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in floats]))
    return finite, jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in weights]))


def _fix(config: ml_collections.ConfigDict, last_good: int | None) -> str:
    """The way out of a divergence: a lower learning rate, resuming from the newest (good) checkpoint."""
    rerun = f"rerun with a lower learning rate (e.g. --config.optimizer.learning_rate={config.optimizer.learning_rate / 10:g})"
    if last_good is None:
        return f"No state was checkpointed before it: {rerun}; the run starts from scratch."
    return (f"The newest checkpoint, step {last_good}, is the last good state: {rerun} and --config.resume=True "
            f"to resume from step {last_good}.")


def _check_finite(metrics: dict[str, float], step: int, fix: str) -> None:
    """Raises DivergedError naming the non-finite metrics of `step` and `fix` (the way out, `_fix`)."""
    bad = [name for name, value in metrics.items() if not np.isfinite(value)]
    if bad:
        raise DivergedError(
            f"step {step}: {', '.join(f'{n}={metrics[n]}' for n in bad)} is not finite; training stopped "
            f"without checkpointing this state. {fix}"
        )


def _check_state(state: State, step: int, limit: float, fix: str) -> None:
    """Raises DivergedError unless `state` is finite with max |weight| ≤ `limit`: what may be checkpointed."""
    finite, largest = (float(x) for x in jax.device_get(_state_health(state)))
    if not finite or not largest <= limit:
        what = "the state holds non-finite values" if not finite else f"max |weight| = {largest:.3g} > {limit:.3g}"
        raise DivergedError(f"step {step}: the weights diverged ({what}); training stopped without "
                            f"checkpointing this state. {fix}")


def _weight_limit(state: State) -> float:
    """DIVERGENCE_FACTOR × max(1, the state's max |weight|): the bound of this run, fixed at initialisation."""
    return DIVERGENCE_FACTOR * max(1.0, float(jax.device_get(_state_health(state))[1]))


def _has_checkpoints(workdir: epath.Path) -> bool:
    directory = workdir / "checkpoints"
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def _claim_workdir(lock: workdir_lib.WorkdirLock, config: ml_collections.ConfigDict, workdir: epath.Path) -> None:
    """Process 0: lock the workdir; then move the old run aside (resume=False) or check the config resumes it."""
    lock.acquire()
    try:
        if not config.resume:
            workdir_lib.move_aside(workdir, keep=(config.compilation_cache_dir,))  # a relative cache stays
        else:
            workdir_lib.check_config(workdir, config, state_signature, _has_checkpoints(workdir))
    except BaseException:
        lock.release()
        raise


def _on_process_zero(fn: Callable[[], None]) -> None:
    """Runs `fn` on process 0; when it raises a UserError every process raises, so none is left waiting."""
    error = None
    if jax.process_index() == 0:
        try:
            fn()
        except UserError as raised:
            error = raised
    if jax.process_count() > 1 and bool(multihost_utils.broadcast_one_to_all(np.asarray(error is not None))):
        error = error or workdir_lib.WorkdirError("process 0 refused the workdir; its log says why")
    if error is not None:
        raise error


def _restore_or_init(trainer: Trainer, checkpointer: Checkpointer, data_iter,
                     workdir: epath.Path) -> tuple[State, dict, int | None]:
    """Resume is the default: newest restorable checkpoint in the workdir, else `init_from` weights, else scratch.

    Returns (state, meta, the restored step or None); meta["weight_limit"] is the run's divergence bound."""
    if trainer.config.resume:
        restored = checkpointer.restore_latest(abstract_state(trainer), data_iter)
        if restored is not None:
            step, state, meta = restored
            logging.info("resumed %s from step %d", workdir, step)
            meta.setdefault("weight_limit", _weight_limit(state))  # checkpoints written before the bound existed
            return state, meta, step
    state = apply_init_from(trainer.config, init_state(trainer), trainer.state_shardings)
    return state, {"weight_limit": _weight_limit(state)}, None


def train(config: ml_collections.ConfigDict, workdir: epath.PathLike, mesh: jax.sharding.Mesh | None = None) -> State:
    """Trains from scratch or resumes from `workdir/checkpoints`; returns the final state.

    The workdir is locked for the whole run (`lmc_jax.workdir`). SIGTERM makes it checkpoint the step in
    progress and raise `Preempted`; a non-finite metric or diverged weights raise DivergedError before that
    state is saved.
    """
    workdir = epath.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = mesh or parallel.make_mesh(config.mesh.data, config.mesh.fsdp)
    trainer = make_trainer(config, mesh)
    lock = workdir_lib.WorkdirLock(workdir)
    _on_process_zero(functools.partial(_claim_workdir, lock, config, workdir))
    try:
        return _train_locked(trainer, workdir)
    finally:
        lock.release()


def _next_global_batch(data_iter, mesh: jax.sharding.Mesh) -> Batch:
    """The next train batch (`BATCH_KEYS`), explicitly put on the mesh with the batch sharding (an async copy).

    The loop fetches batch s + 1 after dispatching step s and after saving that step's checkpoint, so the
    read and the host→device copy overlap the step and the saved iterator state is the one after batch s.
    """
    local = next(data_iter)
    return parallel.host_to_global({name: local[name] for name in BATCH_KEYS}, mesh)


def _train_locked(trainer: Trainer, workdir: epath.Path) -> State:
    config, mesh = trainer.config, trainer.mesh
    data_iter = input_pipeline.make_train_iterator(
        config, config.data.data_dir, process_index=jax.process_index(), process_count=jax.process_count()
    )
    checkpointer = Checkpointer(workdir / "checkpoints", max_to_keep=config.checkpoint.max_to_keep)
    try:
        state, meta, last_good = _restore_or_init(trainer, checkpointer, data_iter, workdir)
    except BaseException:
        checkpointer.close()
        raise
    if jax.process_index() == 0:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    base_key = jax.random.key(config.seed)
    start = int(state["step"])
    writer = MetricWriter(workdir, total_steps=config.num_steps, start_step=start)
    preemption = PreemptionWatch()
    images_seen = meta.get("images_seen", 0)
    step_fn, flops = None, None
    tick, tick_step = time.perf_counter(), start
    try:
        batch = _next_global_batch(data_iter, mesh) if start < config.num_steps else None
        for step in range(start, config.num_steps):
            if step_fn is None:  # compile once, read the FLOPs of the compiled step for MFU
                step_fn = compile_step(trainer).lower(state, batch, base_key).compile()
                flops = compiled_flops(step_fn)
            state, metrics = step_fn(state, batch, base_key)
            images_seen += config.batch_size
            done = step + 1
            writer.progress(done, metrics)
            if done % config.log_every_steps == 0 or done == config.num_steps:
                values = {k: float(v) for k, v in jax.device_get(metrics).items()}
                _check_finite(values, done, _fix(config, last_good))
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
            preempted = preemption.requested(done)
            if preempted or done % config.checkpoint.every_steps == 0 or done == config.num_steps:
                _check_finite({"loss": float(jax.device_get(metrics["loss"]))}, done, _fix(config, last_good))
                _check_state(state, done, meta["weight_limit"], _fix(config, last_good))
                checkpointer.save(done, state, data_iter,
                                  {"step": done, "images_seen": images_seen, "weight_limit": meta["weight_limit"]})
                last_good = done
            if preempted:
                raise Preempted(done)
            if done < config.num_steps:  # read and copied while the step just dispatched runs on the device
                batch = _next_global_batch(data_iter, mesh)
    finally:  # on any exit, finish the saves already started: they are complete states
        preemption.close()
        checkpointer.close()
        writer.close()
    return state
