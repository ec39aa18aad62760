"""One process of a two-process training run that gets preempted: jax.distributed on localhost, 4 fake CPU
devices each, the real training loop on a shared workdir.

    python tests/multiprocess_preemption_check.py PROCESS_ID NUM_PROCESSES PORT DATA_DIR WORKDIR
Exits 143 after `Preempted` and prints `preempted at STEP` (the step both processes agreed to checkpoint).
"""

import os
import sys

process_id, num_processes, port, data_dir, workdir = sys.argv[1:6]
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={8 // int(num_processes)}"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lmc_jax import parallel, train  # noqa: E402
from lmc_jax.preemption import Preempted  # noqa: E402
from tests.conftest import TINY_BUILDER  # noqa: E402
from tests.tiny_config import tiny_config  # noqa: E402


def main() -> int:
    config = tiny_config()
    config.data.data_dir, config.data.builder_config = data_dir, TINY_BUILDER
    config.num_steps, config.checkpoint.every_steps, config.log_every_steps = 100_000, 100_000, 1
    config.distributed.num_processes = int(num_processes)
    config.distributed.process_id = int(process_id)
    config.distributed.coordinator_address = f"127.0.0.1:{port}"
    parallel.maybe_initialize_distributed(config)
    try:
        train.train(config, workdir, parallel.make_mesh(-1, 1))
    except Preempted as preempted:
        print(f"preempted at {preempted.step}", flush=True)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
