"""Shape buckets and zero-padding, so each jitted evaluation kernel compiles once for many input sizes."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

_LARGE = 8192


def bucket(n: int) -> int:
    """n rounded up to a power of two (at least 128), and above 8192 to a multiple of 8192.

    Compiles cost ~0.3 s each on CPU, so small sizes share coarse buckets; large ones waste at most
    8192 padded rows of work, which costs more than a compile.
    """
    if n > _LARGE:
        return -(-n // _LARGE) * _LARGE
    return max(128, 1 << max(0, n - 1).bit_length())


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    """x (n, ...) as float32 with zero rows appended up to `rows` (≥ n)."""
    x = np.asarray(x, np.float32)
    out = np.zeros((rows,) + x.shape[1:], np.float32)
    out[: len(x)] = x
    return out


def chunks(x: np.ndarray, size: int):
    """Yield (zero-padded chunk of exactly `size` rows, number of real rows) over x's rows."""
    for start in range(0, len(x), size):
        part = x[start:start + size]
        yield pad_rows(part, size), len(part)


def batched(fn: Callable[[np.ndarray], np.ndarray], arrays: np.ndarray, batch: int) -> np.ndarray:
    """fn over `arrays` in batches of exactly `batch` rows (the last padded with zeros of their dtype, its padding
    dropped from the output), so a jitted fn compiles once whatever the count."""
    out = []
    for start in range(0, len(arrays), batch):
        chunk = arrays[start : start + batch]
        pad = batch - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
        out.append(np.asarray(fn(chunk))[: batch - pad])
    return np.concatenate(out)
