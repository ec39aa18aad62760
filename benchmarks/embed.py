"""Embedding throughput on this machine: `mode=embed` end to end on the embedded slide, and where the time goes.

Two encoders with random weights (throughput does not depend on the values): configs/default.py's model on its
crop size (ViT-Mi/8, 56 px) and ViT-S/16 at 224 px. For each, the median of --repeats passes of:
  read    slide tiles read and JPEG-decoded from the embedded Aperio .svs (tifffile, tiles of the model's crop);
  decode  the same tiles as PNG files decoded by `tile_io.read_image` (a folder input);
  model   `Encoder.features` on batches already in memory (compilation excluded, done once before);
  mode    `python -m lmc_jax.main --config configs/embed.py` on the slide, in-process (compile included once per
          pass: each pass is a fresh run), tiles/s from its embed_summary.json, with its read/model split.

    python benchmarks/embed.py                 # ~3-6 min on a 2-core CPU
    python benchmarks/embed.py --repeats 1 --tiles 64
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import runpy
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import lmc_jax  # noqa: E402
from data_pipelines.tiling import locate_cmu_slide  # noqa: E402
from lmc_jax import runs, slides  # noqa: E402
from lmc_jax.modes import embed as embed_mode  # noqa: E402
from lmc_jax.stain import tile_io  # noqa: E402

BATCH = 64
REPO = pathlib.Path(__file__).resolve().parents[1]
default_config = runpy.run_path(str(REPO / "configs" / "default.py"))["get_config"]
embed_config = runpy.run_path(str(REPO / "configs" / "embed.py"))["get_config"]


def random_run(workdir: pathlib.Path, variant: str, crop: int) -> pathlib.Path:
    """A workdir of configs/default.py's config with `variant` at `crop` px holding random weights (no training)."""
    config = default_config()
    config.model.variant, config.data.crop_size, config.data.tile_size = variant, crop, crop
    return pathlib.Path(runs.write_random_run(workdir, config))


def median_rate(work, count: int, repeats: int) -> float:
    """Median items/s of `repeats` timed calls of `work` (each handles `count` items)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return count / statistics.median(seconds)


def measure(name: str, variant: str, crop: int, tiles: int, repeats: int, scratch: pathlib.Path) -> dict:
    """The four rates of one encoder (see the module docstring)."""
    run_dir = random_run(scratch / name, variant, crop)
    encoder = lmc_jax.load(run_dir, batch_size=BATCH)
    slide = slides.open_slide(locate_cmu_slide())
    plan = slides.plan_tiles(slide, tile_size=crop, stride=crop, min_tissue=0.25)
    coords = plan.coords[:tiles]

    def read() -> list[np.ndarray]:
        fresh = slides.open_slide(locate_cmu_slide())  # an empty tile cache, as a new run has
        return [slides.read_tile(fresh, plan, y, x) for y, x in coords]

    pixels = np.stack(read())
    folder = scratch / f"{name}_png"
    folder.mkdir()
    for index, tile in enumerate(pixels):
        Image.fromarray(tile).save(folder / f"{index:05d}.png")
    files = sorted(folder.iterdir())
    batches = [pixels[i : i + BATCH] for i in range(0, len(pixels), BATCH)]
    encoder.features(batches[0])  # compile
    rates = {
        "read": median_rate(read, len(coords), repeats),
        "decode": median_rate(lambda: [tile_io.read_image(path) for path in files], len(files), repeats),
        "model": median_rate(lambda: [encoder.features(batch) for batch in batches], len(pixels), repeats),
    }
    mode_rates, splits = [], []
    for index in range(repeats):
        config = embed_config()
        config.checkpoint, config.input, config.batch_size = str(run_dir), str(locate_cmu_slide()), BATCH
        config.progress_every_s = 60.0
        summary = embed_mode.run(config, scratch / f"{name}_mode{index}")
        this = summary["this_run"]
        mode_rates.append(this["tiles_per_second"])
        splits.append(this["read_seconds"] / max(this["read_seconds"] + this["model_seconds"], 1e-9))
    rates["mode"] = statistics.median(mode_rates)
    rates["mode_tiles"] = summary["tiles_embedded"]
    rates["read_share"] = statistics.median(splits)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tiles", type=int, default=256, help="tiles in the read/decode/model passes")
    args = parser.parse_args()
    cpu = next((line.split(":", 1)[1].strip() for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    print(f"# mode=embed throughput, {datetime.date.today()}, {cpu}, {os.cpu_count()} cores, "
          f"jax {jax.__version__} ({jax.default_backend()}), median of {args.repeats}, batch {BATCH}")
    print("| model | crop | read slide tiles/s | decode PNG tiles/s | model tiles/s | mode=embed tiles/s "
          "(tiles) | mode time reading |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory() as scratch:
        for name, variant, crop in (("default", default_config().model.variant, default_config().data.crop_size),
                                    ("vit_s16", "S/16", 224)):
            rates = measure(name, variant, crop, args.tiles, args.repeats, pathlib.Path(scratch))
            print(f"| ViT-{variant} | {crop} | {rates['read']:.0f} | {rates['decode']:.0f} | {rates['model']:.1f} | "
                  f"{rates['mode']:.1f} ({rates['mode_tiles']}) | {rates['read_share']:.0%} |", flush=True)


if __name__ == "__main__":
    main()
