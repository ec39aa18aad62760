"""Stain normalization throughput: our batched, jitted Macenko/Reinhard/Vahadane vs torchstain and StainTools.

256 tiles of 224 x 224 px cut from the embedded slide (tissue ≥ 50%), one reference tile, fit once,
then every tile transformed: ours in batches through one compiled function (compilation excluded,
reported separately), the peers one image at a time as they are used (torchstain NumPy and torch
backends, NumPy also with its BLAS limited to one thread, which is faster on 2 cores; StainTools'
Vahadane on the first --staintools-tiles tiles, since SPAMS' dictionary learning runs about a second
per tile by design). Each figure is the median of --repeats passes.
Also prints ours vs torchstain NumPy mean |Δ| in grey levels on the same tiles. Peers that are not
installed are reported as such.

    python benchmarks/stain_normalize.py               # ~5 min on a 2-core CPU with all peers
    python benchmarks/stain_normalize.py --repeats 1 --peer-tiles 64
    python benchmarks/stain_normalize.py --breakdown   # where Macenko's time goes, vs the 20x target
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines import tiling  # noqa: E402
from lmc_jax.stain import macenko, normalizers, planar, robust  # noqa: E402

TILE = 224


def slide_tiles(count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` tissue tiles (evenly spread over the 224 px, stride-64 grid) and a reference tile off that list."""
    slide = tiling.read_slide_region(tiling.locate_cmu_slide())
    corners = tiling.tile_grid(tiling.tissue_mask(slide), TILE, 64, 0.5)
    picks = np.linspace(0, len(corners) - 2, count).round().astype(int)
    tiles = np.stack([slide[y : y + TILE, x : x + TILE] for y, x in (corners[i] for i in picks)])
    y, x = corners[-1]
    return tiles, slide[y : y + TILE, x : x + TILE].copy()


def device_batches(tiles: np.ndarray, batch: int) -> list[jax.Array]:
    """The tiles on the device in consecutive batches of `batch` (the last may be shorter)."""
    return [jax.device_put(tiles[i : i + batch]) for i in range(0, len(tiles), batch)]


def median_rate(run: Callable[[], object], images: int, repeats: int) -> float:
    """Median images/s of `repeats` timed calls of `run` (which processes `images` images)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return images / statistics.median(seconds)


def ours(name: str, tiles: np.ndarray, reference: np.ndarray, batch: int, repeats: int) -> dict[str, object]:
    """Fit and compile times, images/s and the outputs of our method on all tiles."""
    module = normalizers.get(name).module
    fit, transform = module.fit, module.transform
    start = time.perf_counter()
    params = fit(reference)
    fit_seconds = time.perf_counter() - start
    batches = device_batches(tiles, batch)
    start = time.perf_counter()
    jax.block_until_ready(transform(batches[0], params))
    compile_seconds = time.perf_counter() - start

    def run() -> list:
        return jax.block_until_ready([transform(b, params) for b in batches])

    rate = median_rate(run, len(tiles), repeats)
    outputs = np.concatenate([np.asarray(out) for out, _ in run()])
    return {"fit_s": fit_seconds, "compile_s": compile_seconds, "rate": rate, "outputs": outputs}


def torchstain_peers(name: str, tiles: np.ndarray, reference: np.ndarray, repeats: int) -> dict[str, object]:
    """torchstain NumPy (default BLAS threads, and BLAS limited to one thread, its best case on 2 cores) and
    torch backends, one image at a time as their README uses them; or why they could not run."""
    try:
        import torch  # noqa: PLC0415
        import torchstain  # noqa: PLC0415
        from threadpoolctl import threadpool_limits  # noqa: PLC0415
    except ImportError as error:
        return {"missing": f"not installed ({error}); pip install torchstain torch threadpoolctl"}
    kind = {"macenko": torchstain.normalizers.MacenkoNormalizer, "reinhard": torchstain.normalizers.ReinhardNormalizer}
    extra = {"stains": False} if name == "macenko" else {}

    def first(output: object) -> object:
        return output[0] if isinstance(output, tuple) else output

    numpy_norm = kind[name](backend="numpy")
    numpy_norm.fit(reference)
    results: dict[str, object] = {"version": importlib.metadata.version("torchstain")}
    results["numpy_outputs"] = np.stack([first(numpy_norm.normalize(tile, **extra)) for tile in tiles])
    results["numpy_rate"] = median_rate(lambda: [numpy_norm.normalize(t, **extra) for t in tiles], len(tiles), repeats)
    with threadpool_limits(limits=1, user_api="blas"):
        results["numpy_1blas_rate"] = median_rate(lambda: [numpy_norm.normalize(t, **extra) for t in tiles],
                                                  len(tiles), repeats)
    torch_norm = kind[name](backend="torch")
    chw = [torch.from_numpy(tile).permute(2, 0, 1).contiguous() for tile in tiles]
    torch_norm.fit(torch.from_numpy(reference).permute(2, 0, 1).contiguous())
    results["torch_rate"] = median_rate(lambda: [torch_norm.normalize(t, **extra) for t in chw], len(tiles), repeats)
    return results


def staintools_peer(tiles: np.ndarray, reference: np.ndarray, repeats: int) -> dict[str, object]:
    """StainTools' Vahadane (SPAMS) one image at a time, or why it could not run."""
    try:
        import staintools  # noqa: PLC0415
    except ImportError as error:
        return {"missing": f"staintools not installed ({error}); it needs spams (pip install spams-bin), "
                           "opencv-python-headless and `pip install --no-deps staintools`"}
    normalizer = staintools.StainNormalizer(method="vahadane")
    normalizer.fit(reference.copy())
    rate = median_rate(lambda: [normalizer.transform(tile.copy()) for tile in tiles], len(tiles), repeats)
    return {"version": importlib.metadata.version("staintools"), "rate": rate}


def per_pixel_floor(params: macenko.MacenkoParams) -> Callable[[jax.Array], jax.Array]:
    """What any exact Macenko transform does per pixel once the tile's stains are known: OD, least-squares
    concentrations, rebuild with the target stains, back to uint8 (same layout and grouping as ours)."""
    inverse = np.linalg.pinv(np.asarray(params.stain_matrix))  # [3, 2]: concentrations = OD @ inverse
    io = macenko.MacenkoConfig().io

    def tile_group(images: jax.Array) -> jax.Array:
        def one(image: jax.Array) -> jax.Array:
            od = robust.optical_density(planar.pixels(image), io)
            rebuilt = io * jnp.exp(-planar.apply_matrix(planar.apply_matrix(od, inverse), params.stain_matrix))
            return planar.to_image(rebuilt, image)

        return jax.vmap(one)(images)

    return jax.jit(lambda batch: robust.map_groups(tile_group, batch))


def breakdown(tiles: np.ndarray, reference: np.ndarray, batch: int, repeats: int) -> None:
    """Macenko's time per tile split into its parts, next to the budget the 20x target leaves (same run)."""
    params = macenko.fit(reference)
    batches = device_batches(tiles, batch)
    parts = {
        "whole transform (macenko.transform)": jax.jit(lambda b: macenko.transform(b, params)),
        "stain estimate only (macenko.estimate_stains)": macenko.estimate_stains,
        "per-pixel floor: OD, concentrations, rebuild, uint8 (stains known)": per_pixel_floor(params),
    }
    print("| part | ms per tile | tiles/s |")
    print("| --- | ---: | ---: |")
    for name, fn in parts.items():
        jax.block_until_ready([fn(b) for b in batches])  # compile
        rate = median_rate(lambda fn=fn: jax.block_until_ready([fn(b) for b in batches]), len(tiles), repeats)
        print(f"| {name} | {1e3 / rate:.3f} | {rate:.0f} |")
    peers = torchstain_peers("macenko", tiles, reference, repeats)
    if "missing" not in peers:
        budget = 1e3 / (20 * peers["numpy_rate"])
        print(f"| budget for 20x torchstain {peers['version']} numpy ({peers['numpy_rate']:.0f} tiles/s, same run) "
              f"| {budget:.3f} | {20 * peers['numpy_rate']:.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per call of our jitted transform")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes; the median is reported")
    parser.add_argument("--peer-tiles", type=int, default=0, help="torchstain on only the first N tiles (0 = all)")
    parser.add_argument("--staintools-tiles", type=int, default=16)
    parser.add_argument("--breakdown", action="store_true", help="time Macenko's parts instead of the peers table")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    tiles, reference = slide_tiles(args.tiles)
    peer_tiles = tiles[: args.peer_tiles] if args.peer_tiles else tiles
    print(f"{len(tiles)} tiles {TILE}x{TILE} from cmu_small_region.svs | {os.cpu_count()} CPU cores "
          f"({platform.processor() or platform.machine()}) | jax {jax.__version__} {jax.default_backend()} | "
          f"median of {args.repeats} pass(es) | {datetime.date.today()}")
    if args.breakdown:
        breakdown(tiles, reference, args.batch_size, args.repeats)
        return
    print("| method | ours img/s | compile s | fit s | peer | peer img/s | ours / peer "
          "| mean abs diff vs peer (0-255) |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for name in normalizers.NAMES:
        result = ours(name, tiles, reference, args.batch_size, args.repeats)
        head = f"| {name} | {result['rate']:.0f} | {result['compile_s']:.1f} | {result['fit_s']:.2f}"
        if name == "vahadane":
            peer = staintools_peer(tiles[: args.staintools_tiles], reference, args.repeats)
            if "missing" in peer:
                print(f"{head} | staintools | {peer['missing']} | | |")
            else:
                print(f"{head} | staintools {peer['version']} (SPAMS), first {args.staintools_tiles} tiles | "
                      f"{peer['rate']:.2f} | {result['rate'] / peer['rate']:.0f}x | (another optimiser) |")
            continue
        peers = torchstain_peers(name, peer_tiles, reference, args.repeats)
        if "missing" in peers:
            print(f"{head} | torchstain | {peers['missing']} | | |")
            continue
        diff = np.abs(result["outputs"][: len(peer_tiles)].astype(np.int32) - peers["numpy_outputs"].astype(np.int32))
        version = peers["version"]
        print(f"{head} | torchstain {version} numpy | {peers['numpy_rate']:.1f} | "
              f"{result['rate'] / peers['numpy_rate']:.1f}x | {diff.mean():.2f} (max {diff.max()}) |")
        print(f"| | | | | torchstain {version} numpy, 1 BLAS thread | {peers['numpy_1blas_rate']:.1f} | "
              f"{result['rate'] / peers['numpy_1blas_rate']:.1f}x | |")
        print(f"| | | | | torchstain {version} torch | {peers['torch_rate']:.1f} | "
              f"{result['rate'] / peers['torch_rate']:.1f}x | |")


if __name__ == "__main__":
    main()
