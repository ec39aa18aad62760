"""Checks for normalizer configs and for params loaded from JSON: each bad entry raises naming its key and the fix."""

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def check_method(data: Mapping[str, Any], method: str) -> None:
    """Raise unless `data` was written by the `to_dict` of `method`'s params."""
    if not isinstance(data, Mapping) or data.get("method") != method:
        found = data.get("method") if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"stain params: 'method' is {found!r}, expected {method!r}; load them with lmc_jax.stain.{found} "
            f"or re-create them with lmc_jax.stain.{method}.fit(...).to_dict()."
        )


def finite_array(data: Mapping[str, Any], key: str, shape: tuple[int, ...], positive: bool = False) -> jax.Array:
    """float32 array of `data[key]` with exactly `shape`, finite (and > 0 if `positive`), or a ValueError."""
    if key not in data:
        raise ValueError(f"stain params: key {key!r} is missing; re-create the params with fit(...).to_dict().")
    try:
        value = np.asarray(data[key], dtype=np.float64)
    except (TypeError, ValueError):
        value = np.full((0,), np.nan)
    valid = value.shape == shape and np.all(np.isfinite(value)) and (not positive or np.all(value > 0))
    if not valid:
        rule = "finite and > 0" if positive else "finite"
        raise ValueError(f"stain params: {key!r} must be a {rule} array of shape {shape}, got {data[key]!r}.")
    return jnp.asarray(value, jnp.float32)


def to_lists(**arrays: jax.Array) -> dict[str, Any]:
    """Arrays as nested float lists, ready for json.dump."""
    return {key: np.asarray(value, np.float64).tolist() for key, value in arrays.items()}


def check_fields(config: Any, ranges: Mapping[str, tuple[float, float]]) -> None:
    """Cast each named field of a frozen dataclass to float, raising unless low ≤ value < high."""
    for name, (low, high) in ranges.items():
        value = getattr(config, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not number or not math.isfinite(value) or not low <= value < high:
            raise ValueError(
                f"{type(config).__name__}.{name}={value!r}: choose a number in [{low:g}, {high:g})."
            )
        object.__setattr__(config, name, float(value))
