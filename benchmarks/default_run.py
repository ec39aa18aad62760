"""The default job end to end (what `./run.sh` runs after install): wall time, training steps/s, peak RSS.

    python benchmarks/default_run.py [--runs 1] [-- extra --config.key=value overrides]

Each run uses a fresh workdir (the data set is built once beforehand and not timed). Prints one table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def one_run(extra: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "lmc_jax.main", "--config", "configs/default.py", "--workdir", workdir, *extra]
        start = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.perf_counter() - start
        with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
        step_times = [r["step_time_sec"] for r in records[1:]]  # the first interval includes compilation
    return {"wall_sec": wall, "steps_per_sec": 1.0 / statistics.median(step_times),
            "images_per_sec": statistics.median(r["images_per_sec"] for r in records[1:])}


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    subprocess.run([sys.executable, "-c", "import ml_collections, runpy; from data_pipelines import input_pipeline; "
                    "input_pipeline.ensure_built(runpy.run_path('configs/default.py')['get_config']())"],
                   cwd=ROOT, check=True)
    runs = [one_run(extra) for _ in range(args.runs)]
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    print(f"configs/default.py {' '.join(extra)} | {os.cpu_count()} CPU cores | median of {args.runs} run(s)")
    print("| whole job (train LMC + trained references + evaluate) s | LMC train steps/s | images/s | peak RSS GiB |")
    print("| ---: | ---: | ---: | ---: |")
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"| {med['wall_sec']:.0f} | {med['steps_per_sec']:.2f} | {med['images_per_sec']:.0f} | {peak_gib:.2f} |")


if __name__ == "__main__":
    main()
