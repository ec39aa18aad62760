"""`mode=normalize`: stain-normalize a folder of tiles to a reference with a registered normaliser.

Same-size tiles go through the jitted batched transform together, at most
min(batch_size, max_batch_pixels // pixels per tile) at a time (at least one: a huge image goes
alone); a short group is padded only to the next power of two, so each tile size compiles for a few
batch sizes only (its group size and the powers of two below it). Each result is written under the same file name in the output folder,
and the input folder is only read. An alpha channel is kept (the RGB is normalized, the alpha
written back unchanged); 16-bit, grey, palette and other non-RGB images are converted to 8-bit RGB
(16 bits scaled with rounding) and each conversion is counted and listed. Tiles flagged by the
method (no tissue, degenerate estimate) are copied through byte for byte; corrupt or non-image
files are skipped with one line each. All of these are listed in a JSON log, with the params (which
can serve as the reference of a later run). The methods are those of `lmc_jax.stain.normalizers`
(macenko, reinhard, vahadane). Interface of a mode: `validate(config)` and `run(config, workdir=None)`;
normalize writes only under config.output (and config.log), so it takes no workdir.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

import ml_collections
import numpy as np

from lmc_jax.errors import UserError, require
from lmc_jax.stain import normalizers, robust, tile_io

LOG_NAME = "normalize_log.json"


class NormalizeError(UserError):
    """A normalize config value, reference or folder that cannot work."""


_require = functools.partial(require, error=NormalizeError)  # NormalizeError("config.<key>=<value!r>: <fix>")


def _overlap(first: pathlib.Path, second: pathlib.Path) -> bool:
    """Whether one folder is, or lies inside, the other."""
    return first == second or first in second.parents or second in first.parents


def _method_config(config: ml_collections.ConfigDict) -> Any:
    """The dataclass config of config.method built from config.<method>, or NormalizeError naming the key."""
    config_class = normalizers.get(config.method).config_class
    values = dict(config[config.method].items()) if config.method in config else {}
    known = {field.name for field in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - known)
    _require(not unknown, f"{config.method}", unknown, f"unknown key(s); the known keys are {sorted(known)}")
    try:
        return config_class(**values)
    except (TypeError, ValueError) as error:
        raise NormalizeError(f"config.{config.method}: {error}") from None


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises NormalizeError naming the first bad value of a normalize config (nothing is read or written)."""
    _require(config.mode == "normalize", "mode", config.mode, "this config is for mode='normalize'")
    _require(config.method in normalizers.NAMES, "method", config.method, f"choose one of {sorted(normalizers.NAMES)}")
    _require(bool(config.reference) and pathlib.Path(config.reference).is_file(), "reference", config.reference,
             "set it to a reference tile (PNG/JPEG/TIFF) or a params JSON from an earlier run")
    _require(bool(config.input) and pathlib.Path(config.input).is_dir(), "input", config.input,
             "set it to an existing folder of tiles")
    _require(bool(config.output), "output", config.output, "set it to the folder for the normalized tiles")
    input_dir, output_dir = pathlib.Path(config.input).resolve(), pathlib.Path(config.output).resolve()
    _require(not _overlap(input_dir, output_dir), "output", config.output,
             f"must not be, contain or lie inside config.input={config.input!r}: the input folder is never written")
    if config.log:
        log_path = pathlib.Path(config.log).resolve()
        _require(input_dir not in log_path.parents, "log", config.log, "must not lie inside config.input")
    for key in ("recursive", "overwrite", "progress"):
        _require(isinstance(config[key], bool), key, config[key], "must be True or False")
    for key in ("batch_size", "max_batch_pixels"):
        _require(isinstance(config[key], int) and not isinstance(config[key], bool) and config[key] > 0, key,
                 config[key], "must be a positive integer")
    _require(isinstance(config.jpeg_quality, int) and 1 <= config.jpeg_quality <= 100, "jpeg_quality",
             config.jpeg_quality, "must be an integer in 1..100")
    _method_config(config)


def _load_params(config: ml_collections.ConfigDict, settings: Any) -> Any:
    """Params fitted to the reference image, or read from a params JSON (or a previous run's log)."""
    normalizer = normalizers.get(config.method)
    reference = pathlib.Path(config.reference)
    if reference.suffix.lower() == ".json":
        try:
            data = json.loads(reference.read_text())
            return normalizer.params_class.from_dict(data.get("params", data) if isinstance(data, dict) else data)
        except (OSError, json.JSONDecodeError, ValueError) as error:
            raise NormalizeError(f"config.reference={config.reference!r}: {error}") from None
    image = tile_io.read_rgb(reference)
    if isinstance(image, str):
        raise NormalizeError(f"config.reference={config.reference!r}: {image}; give a PNG/JPEG/TIFF tile.")
    try:
        return normalizer.module.fit(image, settings)
    except ValueError as error:
        raise NormalizeError(f"config.reference={config.reference!r}: {error}") from None


class _Progress:
    """A one-line progress bar on stderr when it is a terminal; silent otherwise."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.done = total, 0
        self.enabled = enabled and total > 0 and sys.stderr.isatty()

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.enabled:
            filled = int(30 * self.done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} tiles")
            sys.stderr.write("\n" if self.done >= self.total else "")
            sys.stderr.flush()


@dataclasses.dataclass
class _Run:
    """What a run has done so far: per-file outcomes and time spent in the transform."""

    normalized: int = 0
    flagged: list[dict[str, str]] = dataclasses.field(default_factory=list)
    skipped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    converted: list[dict[str, str]] = dataclasses.field(default_factory=list)
    alpha_kept: list[str] = dataclasses.field(default_factory=list)
    alpha_dropped: list[dict[str, str]] = dataclasses.field(default_factory=list)
    transform_seconds: float = 0.0


def group_size(shape: tuple[int, ...], config: ml_collections.ConfigDict) -> int:
    """Tiles of `shape` per jitted call: batch_size, fewer when they would pass max_batch_pixels (at least 1)."""
    return max(1, min(config.batch_size, config.max_batch_pixels // (shape[0] * shape[1])))


def bucket(count: int, size: int) -> int:
    """The batch a group of `count` tiles is padded to: the next power of two, at most the group size."""
    return min(size, 1 << (count - 1).bit_length())


Pending = list[tuple[pathlib.Path, tile_io.Decoded]]


def _flush(
    batch: Pending,
    transform: Callable[[np.ndarray], tuple[Any, Any]],
    config: ml_collections.ConfigDict,
    state: _Run,
) -> None:
    """Normalize one same-size batch (padded to its bucket) and write or pass through each tile."""
    images = np.stack([decoded.rgb for _, decoded in batch])
    padding = bucket(len(batch), group_size(images.shape[1:], config)) - len(batch)
    padded = np.concatenate([images, np.repeat(images[-1:], padding, axis=0)])
    start = time.perf_counter()
    outputs, flags = transform(padded)
    outputs, flags = np.asarray(outputs), np.asarray(flags)
    state.transform_seconds += time.perf_counter() - start
    input_dir, output_dir = pathlib.Path(config.input), pathlib.Path(config.output)
    for index, (relative, decoded) in enumerate(batch):
        if flags[index] != robust.NORMALIZED:
            tile_io.copy_bytes(input_dir / relative, output_dir / relative)
            state.flagged.append({"file": str(relative), "flag": robust.FLAG_NAMES[int(flags[index])]})
            continue
        alpha = decoded.alpha
        if alpha is not None and not tile_io.keeps_alpha(relative):
            state.alpha_dropped.append({"file": str(relative), "reason": f"{relative.suffix} cannot store alpha"})
            alpha = None
        elif alpha is not None:
            state.alpha_kept.append(str(relative))
        tile_io.write_rgb(output_dir / relative, outputs[index], config.jpeg_quality, alpha)
        state.normalized += 1


def run(config: ml_collections.ConfigDict, workdir: str | None = None) -> dict[str, Any]:
    """Normalizes config.input into config.output; returns the summary that is also written as the JSON log.

    Validates `config` first; `workdir` is accepted for the uniform mode interface and unused.
    """
    validate(config)
    settings = _method_config(config)
    input_dir, output_dir = pathlib.Path(config.input), pathlib.Path(config.output)
    files = tile_io.list_files(input_dir, config.recursive)
    existing = [str(relative) for relative in files if (output_dir / relative).exists()]
    _require(config.overwrite or not existing, "overwrite", config.overwrite,
             f"{len(existing)} output file(s) already exist (e.g. {existing[:3]}); "
             "set it to True or choose an empty output folder")
    params = _load_params(config, settings)
    module = normalizers.get(config.method).module

    def transform(batch: np.ndarray) -> tuple[Any, Any]:
        return module.transform(batch, params, settings)

    started, state = time.perf_counter(), _Run()
    progress = _Progress(len(files), config.progress)
    pending: dict[tuple[int, ...], Pending] = {}
    for relative in files:
        decoded = tile_io.read_image(input_dir / relative)
        if isinstance(decoded, str):
            logging.warning("skipped %s: %s", input_dir / relative, decoded)
            state.skipped.append({"file": str(relative), "reason": decoded})
            progress.advance()
            continue
        if decoded.conversion:
            logging.info("converted %s: %s", input_dir / relative, decoded.conversion)
            state.converted.append({"file": str(relative), "conversion": decoded.conversion})
        shape = decoded.rgb.shape
        pending.setdefault(shape, []).append((relative, decoded))
        if len(pending[shape]) == group_size(shape, config):
            batch = pending.pop(shape)
            _flush(batch, transform, config, state)
            progress.advance(len(batch))
    for batch in pending.values():
        _flush(batch, transform, config, state)
        progress.advance(len(batch))
    seconds = time.perf_counter() - started
    summary = {
        "method": config.method,
        "reference": str(config.reference),
        "input": str(input_dir),
        "output": str(output_dir),
        "params": params.to_dict(),
        "method_config": dataclasses.asdict(settings),
        "counts": {
            "files": len(files),
            "normalized": state.normalized,
            "flagged": len(state.flagged),
            "skipped": len(state.skipped),
            "converted": len(state.converted),
            "alpha_kept": len(state.alpha_kept),
            "alpha_dropped": len(state.alpha_dropped),
        },
        "flagged": state.flagged,
        "skipped": state.skipped,
        "converted": state.converted,  # 16-bit scaled to 8 bits (rounded), grey / palette / CMYK -> RGB
        "alpha_kept": state.alpha_kept,  # RGB normalized, alpha written back unchanged
        "alpha_dropped": state.alpha_dropped,  # output format without alpha (JPEG)
        "seconds": round(seconds, 3),
        "transform_seconds": round(state.transform_seconds, 3),  # includes the compilations (per size, bucket)
    }
    log_path = pathlib.Path(config.log) if config.log else output_dir / LOG_NAME
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text(json.dumps(summary, indent=2) + "\n")
    logging.info(
        "normalize (%s): %d normalized, %d flagged and copied unchanged, %d skipped (not images or corrupt) "
        "of %d files in %.1f s; %d converted to 8-bit RGB, %d with alpha kept; log: %s",
        config.method, state.normalized, len(state.flagged), len(state.skipped), len(files), seconds,
        len(state.converted), len(state.alpha_kept), log_path,
    )
    summary["log"] = str(log_path)
    return summary
