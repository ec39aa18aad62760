"""Runs 3 LMC train steps under one mesh layout and saves losses, gradients and parameters.

Run as a script (it sets 8 fake CPU devices before JAX starts):
    python tests/multidevice_check.py LAYOUT OUT.npz      LAYOUT in {single, data8, data2_fsdp4}
Used by tests/test_parallel.py to compare layouts.
"""

import os
import sys

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lmc_jax import parallel, train  # noqa: E402
from tests.tiny_config import tiny_config  # noqa: E402

LAYOUTS = {"single": (1, 1, 1), "data8": (8, 8, 1), "data2_fsdp4": (8, 2, 4)}


def main(layout: str, out_path: str) -> None:
    num_devices, data, fsdp = LAYOUTS[layout]
    config = tiny_config()
    config.model.projector_dims = (64, 64)
    config.mesh.fsdp_min_size = 1024  # shard the tiny model's matrices too
    mesh = parallel.make_mesh(data, fsdp, devices=jax.devices()[:num_devices])
    trainer = train.make_trainer(config, mesh)
    state = train.init_state(trainer)
    step_fn = train.compile_step(trainer)
    rng = np.random.default_rng(0)
    batches = rng.integers(0, 256, size=(4, config.batch_size, config.data.tile_size, config.data.tile_size, 3),
                           dtype=np.uint8)
    base_key = jax.random.key(config.seed)
    losses = []
    for batch in batches[:3]:
        state, metrics = step_fn(state, parallel.host_to_global({"image": batch}, mesh), base_key)
        losses.append(float(metrics["loss"]))
    tiles = parallel.host_to_global({"image": batches[3]}, mesh)
    grads = jax.jit(jax.grad(lambda p: train.loss_and_metrics(p, trainer.graphdef, tiles, base_key, config, 3)[0]))(
        state["params"])
    flat = {}
    for prefix, tree in (("grad", grads), ("param", state["params"])):
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
            flat[prefix + jax.tree_util.keystr(path)] = np.asarray(jax.device_get(leaf))
    sharded = sum(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state["params"]))
    np.savez(out_path, losses=np.asarray(losses), sharded=sharded, **flat)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
