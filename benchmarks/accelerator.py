"""One-shot accelerator benchmark: everything worth knowing about a lent GPU/TPU in one command (≤ 8 min).

    benchmarks/accelerator.sh                      # on the device: installs the carried wheels, then runs this
    python benchmarks/accelerator.py --out DIR     # where the packages are already there
    python benchmarks/accelerator.py --tiny        # tiny shapes on the CPU (the test suite runs this)

Sections, each timed and recorded even when it fails (its error's first line) or when the time budget
(--budget-s) ran out before it started:
  train        the full LMC train step (configs/default.py's objective, K=2 on-device stain views, projector,
               AdamW) of ViT-S/16 and ViT-B/16 in bfloat16 on 224 px tiles: tiles/s, images (views)/s, MFU from
               the compiled step's FLOPs (`lmc_jax/throughput.py`);
  attention    fwd+bwd of one attention layer at ViT-S/16 and ViT-B/16 shapes: our ViT's einsum formulation
               (lmc_jax/models/vit.py) vs `jax.nn.dot_product_attention` with implementation None, "xla", "cudnn";
  headroom     the largest batch of each train step that compiles and runs, by doubling (within its time share);
  stain        Macenko and Reinhard transform tiles/s on the device at 224² (batches of 256) and 2500² (one image);
  evaluate     the evaluation suite (benchmarks/evaluate.py's synthetic embeddings and suite) at 10^6 rows;
  embed        encoder forward tiles/s (benchmarks/embed.py's measurement when it exists, else the ViT-S/16 and
               ViT-B/16 encoders here, bfloat16, 224 px).
Writes DIR/accelerator.json (every figure) and DIR/accelerator.md (one table); DIR defaults to $OUT, else
./accelerator_out.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.util
import json
import os
import pathlib
import runpy
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from data_pipelines import tiling  # noqa: E402
from lmc_jax import parallel, train  # noqa: E402
from lmc_jax.models.vit import ViT, parse_variant  # noqa: E402
from lmc_jax.stain import normalizers  # noqa: E402
from lmc_jax.throughput import compiled_flops, cpu_model, mfu, peak_flops  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Sizes:
    """The shapes one run uses: the device's, or --tiny's for a CPU."""

    variants: tuple[str, ...]
    tile: int
    dtype: str
    train_batch: dict[str, int]
    steps: int
    headroom_limit: int  # largest batch tried
    attention_batch: int
    stain_sizes: tuple[int, ...]
    stain_batch: int
    eval_rows: int
    eval_warm_rows: int
    embed_batch: int


DEVICE = Sizes(variants=("S/16", "B/16"), tile=224, dtype="bfloat16", train_batch={"S/16": 256, "B/16": 128},
               steps=10, headroom_limit=16384, attention_batch=512, stain_sizes=(224, 2500), stain_batch=256,
               eval_rows=1_000_000, eval_warm_rows=2000, embed_batch=512)
TINY = Sizes(variants=("mu/8",), tile=32, dtype="float32", train_batch={"mu/8": 8}, steps=2, headroom_limit=8,
             attention_batch=4, stain_sizes=(32,), stain_batch=4, eval_rows=1000, eval_warm_rows=0,
             embed_batch=8)  # headroom_limit = the train batch: no doubling (each try compiles the step again)


def median_seconds(run: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of `repeats` calls of `run` (which blocks until its device work is done)."""
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def default_config():
    """configs/default.py's config, as the command line loads it."""
    return runpy.run_path(str(REPO / "configs" / "default.py"))["get_config"]()


@functools.cache
def _slide() -> np.ndarray:
    return tiling.read_slide_region(tiling.locate_cmu_slide())


def slide_tiles(size: int, count: int) -> np.ndarray:
    """`count` tissue tiles of size² px from the embedded H&E slide; a size larger than the slide takes the
    slide reflected at its edges."""
    slide = _slide()
    if size > min(slide.shape[:2]):
        pad = [(0, max(0, size - slide.shape[0])), (0, max(0, size - slide.shape[1])), (0, 0)]
        return np.repeat(np.pad(slide, pad, mode="reflect")[None, :size, :size], count, axis=0)
    corners = tiling.tile_grid(tiling.tissue_mask(slide), size, size // 2, 0.5)
    return np.stack([slide[y : y + size, x : x + size] for y, x in (corners[i % len(corners)] for i in range(count))])


def lmc_config(variant: str, sizes: Sizes, batch: int):
    """The default job's config with `variant` in `sizes.dtype` on tile² px tiles (views of tile² px)."""
    config = default_config()
    config.model.variant, config.model.dtype = variant, sizes.dtype
    config.data.tile_size = config.data.crop_size = sizes.tile
    config.batch_size = batch
    return config


def run_train_step(variant: str, sizes: Sizes, batch: int, steps: int) -> dict[str, Any]:
    """Compile and time the LMC step at `batch` tiles: tiles/s, views/s, FLOPs, MFU, compile and memory."""
    config = lmc_config(variant, sizes, batch)
    mesh = parallel.make_mesh(1, 1, devices=jax.devices()[:1])
    trainer = train.make_trainer(config, mesh)
    state = train.init_state(trainer)
    tiles = {"image": jax.device_put(slide_tiles(sizes.tile, batch), parallel.batch_sharding(mesh, 4))}
    key = jax.random.key(0)
    start = time.perf_counter()
    compiled = train.compile_step(trainer).lower(state, tiles, key).compile()
    compile_s = time.perf_counter() - start
    flops = compiled_flops(compiled)
    state, metrics = compiled(state, tiles, key)
    jax.block_until_ready(metrics)
    holder = {"state": state}

    def step() -> None:
        holder["state"], out = compiled(holder["state"], tiles, key)
        jax.block_until_ready(out)

    seconds = median_seconds(step, steps)
    memory = compiled.memory_analysis()
    utilisation = mfu(flops, seconds, jax.devices()[0])
    return {"variant": variant, "batch_tiles": batch, "views_per_tile": config.lmc.num_views,
            "seconds_per_step": seconds, "tiles_per_s": batch / seconds,
            "images_per_s": batch * config.lmc.num_views / seconds, "compile_s": compile_s,
            "flops_per_step": flops, "mfu": utilisation,
            "temp_bytes": getattr(memory, "temp_size_in_bytes", None) if memory is not None else None}


def section_train(sizes: Sizes, deadline: float) -> dict[str, Any]:
    del deadline
    return {v: run_train_step(v, sizes, sizes.train_batch[v], sizes.steps) for v in sizes.variants}


def section_headroom(sizes: Sizes, deadline: float) -> dict[str, Any]:
    """Per variant: double the batch from twice the train batch (which the train section ran) while a step
    compiles and runs, each variant in an equal share of the time left."""
    out = {}
    for index, variant in enumerate(sizes.variants):
        share = time.perf_counter() + (deadline - time.perf_counter()) / (len(sizes.variants) - index)
        largest, stopped = sizes.train_batch[variant], "limit"
        batch = 2 * largest
        while batch <= sizes.headroom_limit:
            if time.perf_counter() > share:
                stopped = "time"
                break
            try:
                run_train_step(variant, sizes, batch, 1)
            except Exception as error:  # noqa: BLE001 - out of memory surfaces as several error types
                stopped = _first_line(error)
                break
            largest, batch = batch, batch * 2
        out[variant] = {"largest_batch_tiles": largest, "stopped_by": stopped}
    return out


def ours_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """lmc_jax/models/vit.py's attention maths on [B, T, H, d]: heads-major einsums, float32 softmax."""
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(q.shape[-1] ** -0.5, q.dtype), k)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(q.dtype)
    return jnp.swapaxes(jnp.einsum("bhqk,bhkd->bhqd", weights, v), 1, 2)


def section_attention(sizes: Sizes, deadline: float) -> dict[str, Any]:
    """fwd+bwd ms of one attention layer per implementation at each variant's shape ([B, T, H, d])."""
    del deadline
    implementations: dict[str, Callable] = {
        "ours (vit.py einsums)": ours_attention,
        **{f"dot_product_attention({name})": functools.partial(jax.nn.dot_product_attention, implementation=name)
           for name in (None, "xla", "cudnn")}}
    dtype = jnp.dtype(sizes.dtype)
    out = {}
    for variant in sizes.variants:
        size, patch = parse_variant(variant)
        tokens = (sizes.tile // patch) ** 2 + 1
        shape = (sizes.attention_batch, tokens, size.heads, size.width // size.heads)
        q, k, v = (jax.random.normal(jax.random.key(i), shape, dtype) for i in range(3))
        rows = {"shape_BTHd": list(shape)}
        for name, fn in implementations.items():
            grad = jax.jit(jax.grad(lambda q, k, v, fn=fn: fn(q, k, v).astype(jnp.float32).sum(), argnums=(0, 1, 2)))
            try:
                jax.block_until_ready(grad(q, k, v))
                rows[name] = {"ms_fwd_bwd": 1e3 * median_seconds(lambda g=grad: jax.block_until_ready(g(q, k, v)),
                                                                 sizes.steps)}
            except Exception as error:  # noqa: BLE001 - an implementation this backend lacks
                rows[name] = {"unavailable": _first_line(error)}
        out[variant] = rows
    return out


def section_stain(sizes: Sizes, deadline: float) -> dict[str, Any]:
    """Transform tiles/s of Macenko and Reinhard, fitted to one tile, at each size (compile excluded): a batch of
    sizes.stain_batch tiles at the first size, one image at the others."""
    del deadline
    out = {}
    reference = slide_tiles(sizes.stain_sizes[0], 1)[0]
    for size in sizes.stain_sizes:
        batch = sizes.stain_batch if size == sizes.stain_sizes[0] else 1
        images = jax.device_put(slide_tiles(size, batch))
        for name in ("macenko", "reinhard"):
            module = normalizers.get(name).module
            params = module.fit(reference)
            jax.block_until_ready(module.transform(images, params))
            seconds = median_seconds(lambda m=module, p=params: jax.block_until_ready(m.transform(images, p)),
                                     max(3, sizes.steps // 2))
            out[f"{name} {size}²"] = {"batch": batch, "tiles_per_s": batch / seconds, "ms_per_tile": 1e3 * seconds / batch}
    return out


def _load_benchmark(name: str) -> Any:
    """benchmarks/<name>.py as a module (benchmarks/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"lmc_benchmark_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def section_evaluate(sizes: Sizes, deadline: float) -> dict[str, Any]:
    """benchmarks/evaluate.py's budgeted suite (separation, mixing, probe, 95% CIs) at sizes.eval_rows rows, after
    one run on sizes.eval_warm_rows rows compiles it (as a second evaluation would find it)."""
    del deadline
    evaluate = _load_benchmark("evaluate")
    budget = evaluate.DEFAULTS.replace(protocols=(), signature_folds=0)
    if sizes is TINY:
        budget = budget.replace(bootstrap_replicates=50)
    if sizes.eval_warm_rows:
        evaluate.suite_run(evaluate.synthetic(sizes.eval_warm_rows, 384, seed=1), budget)
    embeddings = evaluate.synthetic(sizes.eval_rows, 384)
    start = time.perf_counter()
    evaluate.suite_run(embeddings, budget)
    return {"rows": sizes.eval_rows, "dim": 384, "bootstrap_replicates": budget.bootstrap_replicates,
            "seconds": time.perf_counter() - start}


def section_embed(sizes: Sizes, deadline: float) -> dict[str, Any]:
    """Encoder forward tiles/s of each variant's ViT on tiles already on the device; on a device also
    benchmarks/embed.py's `measure` (slide read, PNG decode, `Encoder.features`, `mode=embed` end to end; one pass,
    512 tiles), which --tiny leaves out (its mode=embed pass embeds the whole slide)."""
    out: dict[str, Any] = {}
    for variant in sizes.variants:
        model = ViT(variant, sizes.tile, dtype=jnp.dtype(sizes.dtype), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        forward = jax.jit(lambda p, x: nnx.merge(graphdef, p)(x.astype(jnp.float32) / 255.0))
        tiles = jax.device_put(slide_tiles(sizes.tile, sizes.embed_batch))
        jax.block_until_ready(forward(params, tiles))
        seconds = median_seconds(lambda: jax.block_until_ready(forward(params, tiles)), sizes.steps)
        out[f"forward {variant}"] = {"batch": sizes.embed_batch, "tiles_per_s": sizes.embed_batch / seconds}
    if sizes is not TINY and (REPO / "benchmarks" / "embed.py").is_file():
        embed = _load_benchmark("embed")
        with tempfile.TemporaryDirectory() as scratch:
            for variant in sizes.variants:
                if time.perf_counter() < deadline:
                    name = "vit_" + variant.replace("/", "").lower()
                    out[f"embed.py {variant}"] = embed.measure(name, variant, sizes.tile, 512, 1, pathlib.Path(scratch))
    return out


SECTIONS: dict[str, tuple[Callable[[Sizes, float], dict[str, Any]], float]] = {
    # name: (function, share of the whole budget it may plan with)
    "train": (section_train, 0.25),
    "attention": (section_attention, 0.06),
    "stain": (section_stain, 0.1),
    "embed": (section_embed, 0.1),
    "headroom": (section_headroom, 0.24),
    "evaluate": (section_evaluate, 0.2),  # last: it has no deadline of its own
}


def machine() -> dict[str, Any]:
    device = jax.devices()[0]
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "device": device.device_kind, "platform": device.platform, "device_count": jax.device_count(),
            "peak_bf16_flops": peak_flops(device), "cpu": cpu_model(), "cpu_cores": os.cpu_count(),
            "jax": jax.__version__}


def write(result: dict[str, Any], out: pathlib.Path) -> None:
    """accelerator.json and accelerator.md of what has been measured so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "accelerator.json").write_text(json.dumps(result, indent=2, default=str))
    (out / "accelerator.md").write_text(markdown(result))


def run(sizes: Sizes, budget_s: float, out: pathlib.Path, only: Sequence[str] = ()) -> dict[str, Any]:
    """Every section in order within `budget_s` seconds; a section not started in time is marked skipped. The
    files are rewritten after each section, so a run stopped from outside keeps what it measured."""
    begin = time.perf_counter()
    result: dict[str, Any] = {"machine": machine(), "budget_s": budget_s, "sections": {}}
    for name, (function, share) in SECTIONS.items():
        if only and name not in only:
            continue
        now = time.perf_counter()
        if now - begin > budget_s:
            result["sections"][name] = {"skipped": f"budget of {budget_s:.0f} s spent"}
            continue
        deadline = now + min(share * budget_s, begin + budget_s - now)
        cpu = time.process_time()
        try:
            section = function(sizes, deadline)
        except Exception as error:  # noqa: BLE001 - one failing section must not lose the others
            traceback.print_exc()
            section = {"error": _first_line(error)}
        section["seconds_section"] = time.perf_counter() - now
        section["cpu_seconds_section"] = time.process_time() - cpu
        result["sections"][name] = section
        result["seconds_total"] = time.perf_counter() - begin
        write(result, out)
        print(f"[accelerator] {name}: {section['seconds_section']:.1f} s", flush=True)
    result["seconds_total"] = time.perf_counter() - begin
    write(result, out)
    return result


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """One table: a row per (section, item, figure)."""
    info = result["machine"]
    lines = [f"{info['date']}: {info['device']} ({info['platform']}, {info['device_count']} device(s)), CPU "
             f"{info['cpu']} × {info['cpu_cores']}, jax {info['jax']}; {result.get('seconds_total', 0):.0f} s in all",
             "", "| section | item | figure | value |", "| --- | --- | --- | ---: |"]
    for section, body in result["sections"].items():
        for item, value in body.items():
            if isinstance(value, dict):
                for figure, number in value.items():
                    if isinstance(number, dict):
                        for sub, inner in number.items():
                            lines.append(f"| {section} | {item}: {figure} | {sub} | {_fmt(inner)} |")
                    else:
                        lines.append(f"| {section} | {item} | {figure} | {_fmt(number)} |")
            else:
                lines.append(f"| {section} | | {item} | {_fmt(value)} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes, for a CPU (the test suite)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "accelerator_out")
    parser.add_argument("--budget-s", type=float, default=None, help="seconds for all sections (420; tiny: 300)")
    parser.add_argument("--only", nargs="*", default=(), choices=sorted(SECTIONS))
    args = parser.parse_args(argv)
    sizes = TINY if args.tiny else DEVICE
    result = run(sizes, args.budget_s or (300.0 if args.tiny else 420.0), pathlib.Path(args.out), args.only)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
