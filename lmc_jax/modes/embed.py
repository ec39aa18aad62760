"""`mode=embed`: tiles (a folder, a CSV of paths or a whole slide) → embedding shards in WORKDIR/shards/.

The encoder comes from `lmc_jax.api.load` (a workdir through `runs.load_run`, an export directory or timm
weights), so these are the features evaluation and the Python API compute. The work is a fixed list of tiles
(sorted files, CSV rows, or the tissue tiles of the slide's grid) cut into shards of `shard_size`; process p
of P embeds shards p, p+P, ... on its own devices (the batch sharded over them, padded to a multiple of their
count). Each shard is written to a temporary name and renamed, after a JSON of its counts beside it, so a
restart skips the finished shards and never writes a row twice; WORKDIR/embed_manifest.json holds the model
and tiling of the first run and refuses a second run that differs. Corrupt or missing tiles are counted and
listed, never fatal; background tiles are skipped and counted. WORKDIR/embed_summary.json has the totals.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.util
import json
import logging
import math
import os
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from data_pipelines.tiling import tissue_mask as tile_tissue_mask
from lmc_jax import api, parallel, slides
from lmc_jax.errors import UserError, require
from lmc_jax.stain import StainNormalizer, get_normalizer, normalizers, tile_io

MANIFEST = "embed_manifest.json"
SUMMARY = "embed_summary.json"
SHARDS = "shards"
FORMATS = ("auto", "parquet", "npz")
Item = tuple[str, int, int]  # (source path, y, x): a tile file (0, 0) or a slide tile's level-0 corner
Read = Callable[[Item], "np.ndarray | str"]  # a tile's uint8 pixels, or why it cannot be read


def _input_kind(path: pathlib.Path) -> str:
    """folder | csv | slide, by what `path` is; UserError naming the accepted kinds otherwise."""
    if path.is_dir():
        return "folder"
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "csv"
    if suffix in slides.SLIDE_SUFFIXES:
        return "slide"
    raise UserError(f"config.input={str(path)!r}: unknown extension {suffix!r}; give a folder of tiles, a .csv of "
                    f"tile paths or a slide ({', '.join(slides.SLIDE_SUFFIXES)})")


def _format(config: ml_collections.ConfigDict) -> str:
    """The shard format: parquet when asked or (auto) when pyarrow is importable, else npz."""
    if config.format == "auto":
        return "parquet" if importlib.util.find_spec("pyarrow") is not None else "npz"
    return config.format


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises UserError naming the first bad value of an embed config; reads nothing but file metadata."""
    require(config.mode == "embed", "mode", config.mode, "this config is for mode='embed'")
    require(bool(config.checkpoint), "checkpoint", config.checkpoint,
            "set it to a training workdir, an export directory or timm:/path/model.safetensors")
    try:
        api.resolve(config.checkpoint)
    except UserError as error:
        raise UserError(f"config.{error}") from None
    require(bool(config.input), "input", config.input, "set it to a folder of tiles, a .csv of tile paths or a slide")
    require(pathlib.Path(config.input).exists(), "input", config.input, "no such file or folder")
    _input_kind(pathlib.Path(config.input))
    for key in ("step", "level", "tile_size", "stride"):
        lowest = -1 if key == "step" else 0
        require(isinstance(config[key], int) and not isinstance(config[key], bool) and config[key] >= lowest, key,
                config[key], "must be a non-negative integer" + (" or -1 (the newest)" if lowest else ""))
    for key in ("batch_size", "shard_size"):
        require(isinstance(config[key], int) and config[key] > 0, key, config[key], "must be a positive integer")
    require(config.mpp >= 0, "mpp", config.mpp, "microns per pixel > 0, or 0 to tile at config.level")
    require(0 <= config.min_tissue <= 1, "min_tissue", config.min_tissue, "a fraction in [0, 1]")
    require(config.progress_every_s >= 0, "progress_every_s", config.progress_every_s, "seconds >= 0")
    require(config.slide_backend in slides.BACKENDS, "slide_backend", config.slide_backend,
            f"choose one of {slides.BACKENDS}")
    require(config.format in FORMATS, "format", config.format, f"choose one of {FORMATS}")
    require(config.format != "parquet" or importlib.util.find_spec("pyarrow") is not None, "format", config.format,
            "pyarrow is not installed: pip install pyarrow, or use format='npz'")
    for key in ("use_ema", "resize"):
        require(isinstance(config[key], bool), key, config[key], "must be True or False")
    if config.normalizer:
        require(config.normalizer in normalizers.NAMES, "normalizer", config.normalizer,
                f"choose one of {sorted(normalizers.NAMES)}, or '' for none")
        require(bool(config.normalizer_reference) and pathlib.Path(config.normalizer_reference).is_file(),
                "normalizer_reference", config.normalizer_reference,
                "set it to the reference tile (PNG/JPEG/TIFF) the normaliser is fitted to")


@dataclasses.dataclass
class _Work:
    """The fixed list of tiles and how to read one."""

    items: list[Item]
    read: Read
    background: int  # slide grid positions skipped before reading (tile files are judged per shard)
    tiling: dict  # what decided the items (recorded in the manifest and the summary)
    close: Callable[[], None] = lambda: None


def _folder_items(folder: pathlib.Path) -> tuple[list[Item], int]:
    """Every image file under `folder` (recursively, sorted) and the number of other files ignored."""
    files = tile_io.list_files(folder, recursive=True)
    images = [folder / relative for relative in files if relative.suffix.lower() in tile_io.IMAGE_SUFFIXES]
    return [(str(path), 0, 0) for path in images], len(files) - len(images)


def _csv_items(path: pathlib.Path, column: str) -> list[Item]:
    """The paths in `column` of the CSV at `path` (relative ones resolved against its folder), in row order."""
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise UserError(f"config.csv_column={column!r}: {path} has no such column (its header: "
                            f"{reader.fieldnames}); name the column of the tile paths")
        return [(str(path.parent / row[column]), 0, 0) for row in reader if row[column]]


def _read_file(item: Item) -> np.ndarray | str:
    """A tile file's uint8 RGB pixels, or the reason it cannot be read."""
    decoded = tile_io.read_image(pathlib.Path(item[0]))
    return decoded if isinstance(decoded, str) else decoded.rgb


def _work(config: ml_collections.ConfigDict, crop_size: int) -> _Work:
    """The tiles of config.input: files of a folder or CSV, or the planned tissue tiles of a slide."""
    path = pathlib.Path(config.input).absolute()
    kind = _input_kind(path)
    if kind != "slide":
        items, ignored = _folder_items(path) if kind == "folder" else (_csv_items(path, config.csv_column), 0)
        return _Work(items, _read_file, 0, {"input": str(path), "kind": kind, "ignored_files": ignored,
                                            "min_tissue": config.min_tissue, "resize": config.resize})
    tile_size = config.tile_size or crop_size
    try:
        slide = slides.open_slide(path, config.slide_backend)
        plan = slides.plan_tiles(slide, tile_size=tile_size, stride=config.stride or tile_size, level=config.level,
                                 mpp=config.mpp, min_tissue=config.min_tissue)
    except slides.SlideError as error:
        raise UserError(f"config.input={config.input!r}: {error}") from None

    def read(item: Item) -> np.ndarray | str:
        try:
            return slides.read_tile(slide, plan, item[1], item[2])
        except Exception as error:  # a corrupt JPEG tile inside the slide: counted, not fatal
            return f"cannot decode ({type(error).__name__}: {error})"

    tiling = {"input": str(path), "kind": kind, "backend": type(slide).__name__, "level": plan.level,
              "tile_size": tile_size, "stride": config.stride or tile_size, "extent": plan.extent,
              "mpp": None if plan.mpp is None else round(plan.mpp, 4), "min_tissue": config.min_tissue,
              "level_shapes": [list(shape) for shape in slide.level_shapes], "resize": config.resize}
    return _Work([(str(path), y, x) for y, x in plan.coords], read, plan.background, tiling, slide.close)


def _digest(items: list[Item]) -> str:
    """A short hash of the tile list: a restart must find the same tiles in the same shards."""
    return hashlib.sha1("\n".join(f"{p}|{y}|{x}" for p, y, x in items).encode()).hexdigest()[:16]


def _identity(model: dict) -> dict:
    """What makes two encoders the same: run, step, weights and architecture (not how the path was spelt)."""
    return {key: value for key, value in model.items() if key != "source"}


def _check_manifest(workdir: epath.Path, manifest: dict) -> None:
    """Writes the manifest on the first run; on a restart refuses another model, input or tiling."""
    path = workdir / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if _identity(old.get("model") or {}) != _identity(manifest["model"]):
            raise UserError(f"--workdir {workdir} holds embeddings of {old.get('model')}; config.checkpoint="
                            f"{manifest['model']['source']!r} is another model: use another --workdir, or delete it")
        changed = sorted(key for key in manifest if key != "model" and old.get(key) != manifest[key])
        if changed:
            raise UserError(f"--workdir {workdir} holds embeddings made with other {', '.join(changed)} (see "
                            f"{path}): use another --workdir, or the settings of the first run")
        return
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        temporary = pathlib.Path(workdir) / f".{MANIFEST}.partial"
        temporary.write_text(json.dumps(manifest, indent=2) + "\n")
        os.replace(temporary, pathlib.Path(path))  # other processes never read half a manifest


class _Progress:
    """absl progress lines, at most one per `every` seconds: tiles done, tiles/s and the ETA of this process."""

    def __init__(self, total: int, every: float):
        self.total, self.every, self.done = total, every, 0
        self.start = self.last = time.monotonic()

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if now - self.last < self.every and self.done < self.total:
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        logging.info("embed: %d/%d tiles, %.1f tiles/s, ETA %.0f s", self.done, self.total, rate, eta)


@dataclasses.dataclass
class _Shard:
    """One shard's rows and counts."""

    embeddings: list[np.ndarray] = dataclasses.field(default_factory=list)
    rows: list[tuple[str, int, int, int, int]] = dataclasses.field(default_factory=list)  # path, y, x, height, width
    background: int = 0
    corrupt: list[dict] = dataclasses.field(default_factory=list)
    read_seconds: float = 0.0
    model_seconds: float = 0.0


def _is_background(tile: np.ndarray, min_tissue: float) -> bool:
    """Whether a tile file has less than `min_tissue` tissue (glass, dark debris) by the data pipeline's mask."""
    return min_tissue > 0 and float(tile_tissue_mask(tile, exclude_non_he=False).mean()) < min_tissue


def _embed_shard(items: list[Item], work: _Work, encoder: api.Encoder, normalizer: StainNormalizer | None,
                 config: ml_collections.ConfigDict, progress: _Progress) -> _Shard:
    """Reads, prepares (centre crop or resize to the model's crop), normalises and embeds one shard's tiles."""
    shard, pending, kept = _Shard(), [], []
    extent = work.tiling.get("extent")

    def flush() -> None:
        start = time.perf_counter()
        batch = np.stack(pending)
        if normalizer is not None:  # padded to the full batch: one compile of its transform, however many are left
            padding = np.repeat(batch[-1:], encoder.batch_size - len(batch), axis=0)
            batch = normalizer.transform(np.concatenate([batch, padding]))[: len(pending)]
        shard.embeddings.append(encoder.features(batch))
        shard.model_seconds += time.perf_counter() - start
        shard.rows.extend(kept)
        progress.advance(len(pending))
        pending.clear()
        kept.clear()

    for item in items:
        start, queued = time.perf_counter(), False
        tile = work.read(item)
        if isinstance(tile, str):
            where = item[0] if work.tiling["kind"] != "slide" else f"{item[0]} (y={item[1]}, x={item[2]})"
            shard.corrupt.append({"path": where, "reason": tile})
            logging.warning("embed: skipped %s: %s", where, tile)
        elif work.tiling["kind"] != "slide" and _is_background(tile, config.min_tissue):
            shard.background += 1
        else:
            height, width = (extent, extent) if extent else tile.shape[:2]
            pending.append(api.prepare(tile[None], encoder.crop_size, config.resize)[0])
            kept.append((item[0], item[1], item[2], height, width))
            queued = True
        shard.read_seconds += time.perf_counter() - start
        if not queued:
            progress.advance(1)  # skipped: counts towards the ETA now; embedded tiles count when their batch is done
        if len(pending) == encoder.batch_size:
            flush()
    if pending:
        flush()
    return shard


def _write_parquet(path: pathlib.Path, columns: dict[str, np.ndarray], embeddings: np.ndarray,
                   model: dict) -> None:
    """One shard as Parquet: the columns, `embedding` as fixed-size float32 lists, the model in the schema."""
    import pyarrow as pa  # pylint: disable=import-outside-toplevel - optional
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel

    arrays = {name: pa.array(values) for name, values in columns.items()}
    arrays["embedding"] = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1), pa.float32()),
                                                            embeddings.shape[1])
    table = pa.table(arrays).replace_schema_metadata({"lmc_jax_model": json.dumps(model)})
    pq.write_table(table, path)


def _write_shard(path: pathlib.Path, shard: _Shard, dim: int, model: dict, level: int, fmt: str) -> None:
    """The counts JSON, then the shard under a temporary name renamed into place (the mark of a finished shard)."""
    count = len(shard.rows)
    embeddings = np.concatenate(shard.embeddings) if shard.embeddings else np.zeros((0, dim), np.float32)
    paths, ys, xs, heights, widths = (list(column) for column in zip(*shard.rows)) if count else ([],) * 5
    columns = {
        "path": np.asarray(paths, dtype=str), "level": np.full(count, level, np.int32),
        "y": np.asarray(ys, np.int64), "x": np.asarray(xs, np.int64),
        "height": np.asarray(heights, np.int64), "width": np.asarray(widths, np.int64),
        "model_run": np.asarray([str(model["run"])] * count, dtype=str),
        "model_step": np.full(count, -1 if model["step"] is None else model["step"], np.int64),
        "model_weights": np.asarray([str(model["weights"])] * count, dtype=str),
    }
    counts = {"tiles": count, "background": shard.background, "corrupt": shard.corrupt,
              "read_seconds": round(shard.read_seconds, 3), "model_seconds": round(shard.model_seconds, 3)}
    path.with_suffix(".json").write_text(json.dumps(counts, indent=2) + "\n")
    temporary = path.with_name(f".{path.name}.partial")
    if fmt == "parquet":
        _write_parquet(temporary, columns, embeddings, model)
    else:
        with temporary.open("wb") as handle:
            np.savez(handle, embedding=embeddings, model=np.asarray(json.dumps(model)), **columns)
    os.replace(temporary, path)


def _summary(workdir: epath.Path, names: list[str], work: _Work, model: dict, fmt: str, this_run: dict) -> dict:
    """Totals over every shard's counts JSON, written to WORKDIR/embed_summary.json."""
    shard_dir = pathlib.Path(workdir) / SHARDS
    counts = [json.loads((shard_dir / name).with_suffix(".json").read_text()) for name in names
              if (shard_dir / name).exists()]
    corrupt = [entry for count in counts for entry in count["corrupt"]]
    summary = {
        "model": model, "format": fmt, "tiling": work.tiling,
        "tiles_listed": len(work.items) + work.background,  # tile files, or slide grid positions
        "tiles_embedded": sum(count["tiles"] for count in counts),
        "background_skipped": work.background + sum(count["background"] for count in counts),
        "corrupt": len(corrupt), "corrupt_files": corrupt,
        "shards": len(names), "shards_finished": len(counts), "shard_dir": str(shard_dir),
        "shard_files": names,
        **this_run,
    }
    (pathlib.Path(workdir) / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _normalizer(config: ml_collections.ConfigDict) -> StainNormalizer | None:
    """config.normalizer fitted to config.normalizer_reference, or None; UserError for an unusable reference."""
    if not config.normalizer:
        return None
    reference = tile_io.read_rgb(pathlib.Path(config.normalizer_reference))
    if isinstance(reference, str):
        raise UserError(f"config.normalizer_reference={config.normalizer_reference!r}: {reference}")
    try:
        return get_normalizer(config.normalizer).fit(reference)
    except ValueError as error:
        raise UserError(f"config.normalizer_reference={config.normalizer_reference!r}: {error}; give a reference "
                        "tile with tissue") from None


def run(config: ml_collections.ConfigDict, workdir: epath.Path | None) -> dict[str, Any]:
    """Embeds config.input with config.checkpoint into `workdir`; returns the summary (process 0's view)."""
    validate(config)
    if workdir is None:
        raise UserError("mode=embed needs --workdir (the shards and embed_summary.json go there)")
    parallel.maybe_initialize_distributed(config)
    normalizer = _normalizer(config)
    encoder = api.load(config.checkpoint, step=config.step, use_ema=config.use_ema, batch_size=config.batch_size,
                       variant=config.variant)
    work = _work(config, encoder.crop_size)
    fmt = _format(config)
    model = encoder.provenance
    level = work.tiling.get("level", 0)
    manifest = {"model": model, "tiling": work.tiling, "tiles": len(work.items), "digest": _digest(work.items),
                "shard_size": config.shard_size, "format": fmt,
                "normalizer": {"name": config.normalizer, "reference": config.normalizer_reference}}
    _check_manifest(workdir, manifest)
    shard_dir = pathlib.Path(workdir) / SHARDS
    shard_dir.mkdir(parents=True, exist_ok=True)
    count = max(1, -(-len(work.items) // config.shard_size))
    names = [f"embeddings-{index:05d}-of-{count:05d}.{fmt}" for index in range(count)]
    mine = [index for index in range(jax.process_index(), count, jax.process_count())]
    todo = [index for index in mine if not (shard_dir / names[index]).exists()]
    logging.info("embed: %d tiles in %d shards; %d of this process's %d shards already done; model %s",
                 len(work.items), count, len(mine) - len(todo), len(mine), model)
    total = sum(len(work.items[i * config.shard_size:(i + 1) * config.shard_size]) for i in todo)
    progress, started = _Progress(total, config.progress_every_s), time.perf_counter()
    embedded, read_seconds, model_seconds = 0, 0.0, 0.0
    try:
        for index in todo:
            shard = _embed_shard(work.items[index * config.shard_size:(index + 1) * config.shard_size], work,
                                 encoder, normalizer, config, progress)
            _write_shard(shard_dir / names[index], shard, encoder.dim, model, level, fmt)
            embedded += len(shard.rows)
            read_seconds += shard.read_seconds
            model_seconds += shard.model_seconds
    finally:
        work.close()
    seconds = time.perf_counter() - started
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

        multihost_utils.sync_global_devices("lmc_jax.modes.embed: shards written")
    this_run = {"this_run": {"tiles_embedded": embedded, "shards_written": len(todo),
                             "shards_skipped": len(mine) - len(todo), "seconds": round(seconds, 3),
                             "read_seconds": round(read_seconds, 3), "model_seconds": round(model_seconds, 3),
                             "tiles_per_second": round(embedded / seconds, 2) if seconds > 0 else 0.0,
                             "process": jax.process_index(), "processes": jax.process_count(),
                             "devices": jax.local_device_count()}}
    summary = _summary(workdir, names, work, model, fmt, this_run) if jax.process_index() == 0 else this_run
    logging.info("embed: %s tiles embedded, %s background skipped, %s corrupt; summary %s",
                 summary.get("tiles_embedded"), summary.get("background_skipped"), summary.get("corrupt"),
                 pathlib.Path(workdir) / SUMMARY)
    return summary
