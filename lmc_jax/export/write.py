"""Writes an export directory atomically: everything goes to a temporary sibling, then one rename.

A failure at any point leaves no partial output; an existing output is replaced only when asked.
Paths go through etils.epath, so `output` may be remote (gs://...); there a folder rename is a copy and a
delete, not atomic, but a failed export still leaves only the hidden staging folder's remains behind.
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any, Callable, Mapping

import numpy as np
from etils import epath
from safetensors.numpy import save

SAFETENSORS_METADATA = {"format": "pt"}  # what torch-side loaders (timm, transformers) expect


def write_export(
    output: epath.PathLike,
    tensor_files: Mapping[str, Mapping[str, np.ndarray]],
    config: Mapping[str, Any],
    *,
    overwrite: bool = False,
    check: Callable[[epath.Path], None] | None = None,
) -> list[epath.Path]:
    """Writes `{file name: tensors}` as safetensors and `config` as config.json into `output`.

    `check(staging_dir)` runs on the complete files before they are moved into place; if it
    raises, nothing is written. Returns the written paths. An existing non-empty `output`
    raises unless `overwrite`.
    """
    output = epath.Path(output) if "://" in str(output) else epath.Path(os.path.abspath(output))
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"export output {output} exists and is not a directory; choose another config.output.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"export output {output} is not empty; choose another config.output or set "
                              "config.overwrite=True to replace it.")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:12]}"
    staging.mkdir()  # ordinary permissions (umask), unlike mkdtemp's 0700
    try:
        for name, tensors in tensor_files.items():
            arrays = {key: np.ascontiguousarray(value, np.float32) for key, value in tensors.items()}
            (staging / name).write_bytes(save(arrays, metadata=SAFETENSORS_METADATA))
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if check is not None:
            check(staging)
        _swap_into_place(staging, output)
    except BaseException:
        _remove(staging)
        raise
    return [output / name for name in (*tensor_files, "config.json")]


def _remove(path: epath.Path) -> None:
    try:
        path.rmtree(missing_ok=True)
    except OSError:
        pass


def _swap_into_place(staging: epath.Path, output: epath.Path) -> None:
    """Renames `staging` to `output`; an old `output` is moved aside first and deleted after."""
    if not output.exists():
        staging.rename(output)
        return
    old = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:12]}"
    output.rename(old)
    try:
        staging.rename(output)
    except BaseException:
        old.rename(output)
        raise
    finally:
        _remove(old)
