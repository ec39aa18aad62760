"""The one registry of stain normalisers: name → maths module, hyper-parameter dataclass and params class.

Each module has `fit(target_images, config) -> params` and `transform(batch, params, config) ->
(images, flags)`; its config class is a frozen dataclass whose field defaults are the only place
the method's defaults are written (configs/normalize.py derives its blocks from them), and its
params class has `to_dict`/`from_dict`. Adding a normaliser is its module plus one entry below.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

from lmc_jax.errors import UserError
from lmc_jax.stain import macenko, reinhard, vahadane


@dataclasses.dataclass(frozen=True)
class Normalizer:
    """One stain normaliser: its name, maths module, hyper-parameter dataclass and fitted-params class."""

    name: str  # the value of config.method / an entry of config.eval.normalizers
    module: ModuleType  # has fit(target_images, config) and transform(batch, params, config)
    config_class: type  # frozen dataclass of hyper-parameters; its defaults are the method's defaults
    params_class: type  # the fitted target (a pytree) with to_dict / from_dict for the JSON log


NORMALIZERS: dict[str, Normalizer] = {
    normalizer.name: normalizer
    for normalizer in (
        Normalizer("macenko", macenko, macenko.MacenkoConfig, macenko.MacenkoParams),
        Normalizer("reinhard", reinhard, reinhard.ReinhardConfig, reinhard.ReinhardParams),
        Normalizer("vahadane", vahadane, vahadane.VahadaneConfig, vahadane.VahadaneParams),
    )
}
NAMES: tuple[str, ...] = tuple(NORMALIZERS)


def get(name: str) -> Normalizer:
    """The registered normaliser called `name`; UserError naming the choices otherwise."""
    if name not in NORMALIZERS:
        raise UserError(f"unknown stain normaliser {name!r}; choose one of {sorted(NORMALIZERS)}")
    return NORMALIZERS[name]


def fit_transform_fn(
    name: str, reference_tiles: np.ndarray, settings: Any = None
) -> Callable[[np.ndarray], np.ndarray]:
    """`name` fitted to `reference_tiles` (uint8 [H, W, 3] or pooled [N, H, W, 3]), as uint8 [N, H, W, 3] → uint8.

    `settings` is an instance of the normaliser's config class (its defaults when None). Flagged
    tiles come back as the method returns them (unchanged); raises ValueError when the reference
    has no usable tissue.
    """
    normalizer = get(name)
    settings = normalizer.config_class() if settings is None else settings
    params = normalizer.module.fit(reference_tiles, settings)

    def transform(images: np.ndarray) -> np.ndarray:
        return np.asarray(normalizer.module.transform(images, params, settings)[0])

    return transform


def fit_normalizers(names: tuple[str, ...], source_tiles: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Each named normaliser fitted (default settings) to `source_tiles` (uint8 [N, H, W, 3]).

    Unknown names raise UserError naming config.eval.normalizers and the choices, before anything is fitted.
    """
    unknown = sorted(set(names) - set(NORMALIZERS))
    if unknown:
        raise UserError(f"config.eval.normalizers: unknown {unknown}; choose from {sorted(NORMALIZERS)}")
    return {name: fit_transform_fn(name, source_tiles) for name in names}
