"""Device mesh, shardings and host→global batch assembly: one code path from 1 CPU to a pod.

The mesh has two axes, `data` and `fsdp`. The batch is split over both (FSDP is data
parallel too); large weights are additionally sharded over `fsdp` on their largest divisible
dimension, small ones are replicated. `jit` inserts the collectives.
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def maybe_initialize_distributed(config) -> None:
    """Calls `jax.distributed.initialize` only when this is truly a multi-process job.

    Explicit: `config.distributed.num_processes > 1` with coordinator/process id (CPU clusters, tests).
    Automatic: `config.distributed.auto` (Cloud TPU pods: JAX finds its peers itself) or a SLURM /
    `JAX_COORDINATOR_ADDRESS` environment. A single non-TPU host must not call it: it fails there.
    """
    dist = config.distributed
    explicit = dist.num_processes > 1
    from_env = "JAX_COORDINATOR_ADDRESS" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1
    if not (explicit or dist.auto or from_env):
        return
    if dist.cpu_collectives:
        jax.config.update("jax_cpu_collectives_implementation", dist.cpu_collectives)
    kwargs = {}
    if explicit:
        kwargs = dict(
            coordinator_address=dist.coordinator_address,
            num_processes=dist.num_processes,
            process_id=dist.process_id,
        )
    jax.distributed.initialize(**kwargs)
    logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(data: int = -1, fsdp: int = 1, devices=None) -> Mesh:
    """Mesh of shape (data, fsdp) over all devices; -1 takes all devices that remain."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    n = devices.size
    if data == -1 and fsdp == -1:
        raise ValueError("mesh.data and mesh.fsdp cannot both be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n:
        raise ValueError(f"mesh.data={data} × mesh.fsdp={fsdp} must equal the {n} devices available")
    return Mesh(
        devices.reshape(data, fsdp), BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto)
    )


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Leading (batch) axis split over data×fsdp, the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
    """Shards the largest dimension divisible by the fsdp axis; replicates small or indivisible arrays."""
    if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp_size == 0:
            spec = [None] * len(shape)
            spec[dim] = "fsdp"
            return P(*spec)
    return P()


def param_shardings(abstract_params, mesh: Mesh, min_size: int = 2**14):
    """A NamedSharding for every leaf of a params/opt-state pytree (FSDP rule above)."""
    fsdp = mesh.shape["fsdp"]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, fsdp_spec(tuple(leaf.shape), fsdp, min_size)), abstract_params
    )


def host_to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles each process's local batch into one global `jax.Array` sharded over the batch axes."""
    return {
        name: jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim), value)
        for name, value in batch.items()
    }
