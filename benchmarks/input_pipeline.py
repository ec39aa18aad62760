"""Input pipeline throughput: grain read → decode → flip/rotate → batch from array_record, per CPU core and in
total, next to the default train step's rate on this machine and the rate one H200 needs at 40% MFU.

For each tile size (64 px = the default job's, 96 and 224 px) and image encoding of
`data_pipelines.builders.common.IMAGE_ENCODINGS` (raw = TFDS's int64 Tensor, today's shards; bytes; zlib; png;
jpeg), --records real H&E tiles of the embedded slide are written to a temporary array_record shard exactly as
TFDS writes them (the features' tf.Example bytes, group_size:1), then read back through
`input_pipeline.train_dataset` (the train stream itself: shuffle, repeat, dihedral flip on the host, batch 64,
grain's read threads) with 0 and --workers worker processes. Reported per encoding: stored bytes per tile, decode
tiles/s on one thread, the pipeline's tiles/s and tiles per CPU-second of the process (0 workers), and its
tiles/s with workers. The train step is the default job's full LMC step (configs/default.py: ViT-Mi/8, 64 px
tiles, K=2 on-device stain views of 56 px, batch 64), timed the same way (tiles/s and tiles per CPU-second).
The H200 need is 0.4 × 989 TFLOP/s over the compiled FLOPs per tile of the same LMC step for ViT-S/16 and
ViT-B/16 on 224 px tiles (views of 224 px; XLA's cost analysis of the lowered step, `lmc_jax/throughput.py`).
Each figure is the median of --repeats passes; ratios come from one run.

    python benchmarks/input_pipeline.py                  # ~10 min on a 2-core CPU
    python benchmarks/input_pipeline.py --tiles 96 --encodings raw bytes --repeats 1
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import runpy
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import grain  # noqa: E402
import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402
from array_record.python import array_record_module  # noqa: E402

from data_pipelines import input_pipeline, tiling  # noqa: E402
from data_pipelines.builders import common  # noqa: E402
from lmc_jax import parallel, train  # noqa: E402
from lmc_jax.throughput import PEAK_FLOPS_BF16, compiled_flops, cpu_model, required_rate  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
H200_PEAK = PEAK_FLOPS_BF16["NVIDIA H200"]
TARGET_MFU = 0.4
BATCH = 64


def default_config() -> ml_collections.ConfigDict:
    """configs/default.py's config, as the command line loads it."""
    return runpy.run_path(str(REPO / "configs" / "default.py"))["get_config"]()


def slide_tiles(size: int, count: int) -> np.ndarray:
    """`count` tissue tiles of size² px from the embedded H&E slide (a stride-size/2 grid, cycled if short)."""
    slide = tiling.read_slide_region(tiling.locate_cmu_slide())
    corners = tiling.tile_grid(tiling.tissue_mask(slide), size, size // 2, 0.5)
    return np.stack([slide[y : y + size, x : x + size] for y, x in (corners[i % len(corners)] for i in range(count))])


def write_shard(path: pathlib.Path, tiles: np.ndarray, encoding: str) -> int:
    """Writes `tiles` as TFDS examples with `encoding` to one array_record file; returns its size in bytes."""
    features = common.example_features(tiles.shape[1], ["source"], None, image_encoding=encoding)
    writer = array_record_module.ArrayRecordWriter(str(path), "group_size:1")
    for index, tile in enumerate(tiles):
        writer.write(features.serialize_example({
            "image": common.encode_image(tile, encoding), "label": index % 2, "site": 0, "region": index % 7,
            "coords": np.array([index, 0], np.int64), "tile_id": index}))
    writer.close()
    return path.stat().st_size


class ShardSource:
    """A decoding random-access source over one array_record file: what `tfds.data_source` does (read the
    record, `features.deserialize_example_np`), without a registered builder. Picklable for grain workers."""

    def __init__(self, path: pathlib.Path, tile_size: int, encoding: str):
        self._records = grain.sources.ArrayRecordDataSource([str(path)])
        self._features = common.example_features(tile_size, ["source"], None, image_encoding=encoding)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict:
        return self._features.deserialize_example_np(self._records[index])


def median_seconds(run: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median (wall seconds, process CPU seconds) of `repeats` calls of `run`."""
    walls, cpus = [], []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def decode_rate(source: ShardSource, repeats: int) -> float:
    """Tiles/s of reading and decoding every record on one thread."""
    wall, _ = median_seconds(lambda: [source[i] for i in range(len(source))], repeats)
    return len(source) / wall


def pipeline_rate(source: ShardSource, workers: int, batches: int, repeats: int) -> tuple[float, float]:
    """(tiles/s, tiles per process CPU-second) of the train stream with `workers` processes (their CPU time is
    not the process's). The first batch (worker start-up, first reads) is not timed; with workers twice as many
    batches are timed, so the batches they buffered ahead weigh less."""
    iterator = iter(input_pipeline.train_dataset(source, seed=0, local_batch=BATCH, worker_count=workers))
    next(iterator)
    batches = batches * 2 if workers else batches
    wall, cpu = median_seconds(lambda: [next(iterator) for _ in range(batches)], repeats)
    return batches * BATCH / wall, batches * BATCH / max(cpu, 1e-9)


def train_step_rate(config: ml_collections.ConfigDict, steps: int) -> tuple[float, float]:
    """(tiles/s, tiles per process CPU-second) of the compiled LMC train step of `config`, median of `steps`."""
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    trainer = train.make_trainer(config, mesh)
    state = train.init_state(trainer)
    tiles = {"image": jax.device_put(slide_tiles(config.data.tile_size, config.batch_size),
                                     parallel.batch_sharding(mesh, 4))}
    key = jax.random.key(0)
    step = train.compile_step(trainer)
    state, metrics = step(state, tiles, key)
    jax.block_until_ready(metrics)
    walls, cpus = [], []
    for _ in range(steps):
        cpu, wall = time.process_time(), time.perf_counter()
        state, metrics = step(state, tiles, key)
        jax.block_until_ready(metrics)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return config.batch_size / statistics.median(walls), config.batch_size / statistics.median(cpus)


def lmc_flops_per_tile(variant: str, tile: int, batch: int = 8) -> float:
    """FLOPs per tile of the default LMC step (K views, projector, AdamW) with `variant` on tile² px views."""
    config = default_config()
    config.model.variant, config.data.tile_size, config.data.crop_size, config.batch_size = variant, tile, tile, batch
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    trainer = train.make_trainer(config, mesh)
    tiles = {"image": jax.ShapeDtypeStruct((batch, tile, tile, 3), np.uint8, sharding=parallel.batch_sharding(mesh, 4))}
    key = jax.eval_shape(lambda: jax.random.key(0))
    lowered = train.compile_step(trainer).lower(train.abstract_state(trainer), tiles, key)
    return compiled_flops(lowered) / batch


def run(args: argparse.Namespace) -> list[str]:
    """Every measurement; returns the markdown lines of the report."""
    config = default_config()
    train_rate, train_per_core = train_step_rate(config, args.steps)
    needs = {variant: required_rate(lmc_flops_per_tile(variant, 224), H200_PEAK, TARGET_MFU)
             for variant in args.h200_variants}
    lines = [f"{datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, "
             f"jax {jax.__version__}, grain {grain.__version__ if hasattr(grain, '__version__') else '?'}; "
             f"{args.records} records per shard, batch {BATCH}, median of {args.repeats}",
             "",
             f"Default train step (configs/default.py, full LMC step): {train_rate:.0f} tiles/s, "
             f"{train_per_core:.0f} tiles per CPU-second.",
             *(f"One H200 at {TARGET_MFU:.0%} MFU, LMC step ViT-{v} on 224 px tiles: {rate:,.0f} tiles/s"
               for v, rate in needs.items()),
             "",
             f"| tile | encoding | bytes/tile | decode tiles/s (1 thread) | pipeline tiles/s, 0 workers | "
             f"tiles per CPU-s | × default step per core | pipeline tiles/s, {args.workers} workers |",
             "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.tiles:
            tiles = slide_tiles(size, args.records)
            for encoding in args.encodings:
                path = pathlib.Path(tmp) / f"{size}_{encoding}.array_record-00000-of-00001"
                stored = write_shard(path, tiles, encoding)
                source = ShardSource(path, size, encoding)
                decode = decode_rate(source, args.repeats)
                rate, per_core = pipeline_rate(source, 0, args.batches, args.repeats)
                workers = (f"{pipeline_rate(source, args.workers, args.batches, args.repeats)[0]:.0f}"
                           if args.workers > 0 else "")
                lines.append(f"| {size} | {encoding} | {stored / args.records:,.0f} | {decode:,.0f} | {rate:,.0f} | "
                             f"{per_core:,.0f} | {per_core / train_per_core:.1f}× | {workers} |")
                print(lines[-1], flush=True)
    return lines


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, nargs="+", default=[64, 96, 224])
    parser.add_argument("--encodings", nargs="+", default=list(common.IMAGE_ENCODINGS), choices=common.IMAGE_ENCODINGS)
    parser.add_argument("--records", type=int, default=256, help="tiles per shard")
    parser.add_argument("--batches", type=int, default=4, help="timed batches of 64 per pass (8 with workers)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="grain worker processes")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed train steps")
    parser.add_argument("--h200-variants", nargs="*", default=["S/16", "B/16"])
    return parser.parse_args(argv)


def main() -> None:
    flags.FLAGS.mark_as_parsed()  # grain worker processes read absl flags
    print("\n".join(run(parse_args())))


if __name__ == "__main__":
    main()
