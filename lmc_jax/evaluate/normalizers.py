"""Stain-normalisation baselines for evaluation: each method fitted to source-site tiles, as uint8 → uint8 functions."""

from __future__ import annotations

from typing import Callable

import numpy as np

from lmc_jax.stain import macenko, reinhard, vahadane

METHODS = {"macenko": macenko, "reinhard": reinhard, "vahadane": vahadane}


def fit_normalizers(names: tuple[str, ...], source_tiles: np.ndarray) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """Fits each named normaliser to `source_tiles` (uint8 [N, H, W, 3]); unknown names raise naming the choices."""
    unknown = sorted(set(names) - set(METHODS))
    if unknown:
        raise ValueError(f"config.eval.normalizers: unknown {unknown}; choose from {sorted(METHODS)}")
    transforms = {}
    for name in names:
        module = METHODS[name]
        params = module.fit(source_tiles)
        transforms[name] = lambda images, m=module, p=params: np.asarray(m.transform(images, p)[0])
    return transforms
