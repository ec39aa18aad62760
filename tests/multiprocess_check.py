"""One process of a multi-process run: 4 fake CPU devices, jax.distributed on localhost, 3 train steps.

    python tests/multiprocess_check.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR OUT.npz
Every process feeds its slice of one fixed global batch, so the result must equal one process
with 8 devices; each process also records which records its data iterator read.
"""

import os
import sys

process_id, num_processes, port, data_dir, out_path = sys.argv[1:6]
devices_per_process = 8 // int(num_processes)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices_per_process}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines import input_pipeline  # noqa: E402
from lmc_jax import parallel, train  # noqa: E402
from tests.conftest import TINY_BUILDER  # noqa: E402
from tests.tiny_config import tiny_config  # noqa: E402


def main() -> None:
    config = tiny_config()
    config.data.data_dir, config.data.builder_config = data_dir, TINY_BUILDER
    if int(num_processes) > 1:
        config.distributed.num_processes = int(num_processes)
        config.distributed.process_id = int(process_id)
        config.distributed.coordinator_address = f"127.0.0.1:{port}"
    parallel.maybe_initialize_distributed(config)
    assert jax.device_count() == 8, jax.devices()
    mesh = parallel.make_mesh(-1, 1)
    trainer = train.make_trainer(config, mesh)
    state = train.init_state(trainer)
    step_fn = train.compile_step(trainer)
    rng = np.random.default_rng(0)
    shape = (3, config.batch_size, config.data.tile_size, config.data.tile_size, 3)
    batches = rng.integers(0, 256, size=shape, dtype=np.uint8)
    local = config.batch_size // jax.process_count()
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    losses = []
    for batch in batches:
        state, metrics = step_fn(state, parallel.host_to_global({"image": batch[mine]}, mesh),
                                 jax.random.key(config.seed))
        losses.append(float(metrics["loss"]))
    iterator = input_pipeline.make_train_iterator(
        config, data_dir, process_index=jax.process_index(), process_count=jax.process_count())
    tile_ids = np.concatenate([next(iterator)["tile_id"] for _ in range(3)])
    np.savez(out_path, losses=np.asarray(losses), tile_ids=tile_ids)


if __name__ == "__main__":
    main()
