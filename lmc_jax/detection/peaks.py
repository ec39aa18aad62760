"""Peaks of a heat map: local maxima above a threshold, thinned to a minimum distance (greedy by score)."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from lmc_jax.detection.heatmap import local_maxima
from lmc_jax.evaluate.kernels.detection import non_max_suppression


def find_peaks(heat: np.ndarray, threshold: float, min_distance: float, stride: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
    """(yx, scores) of the peaks of `heat` [H, W], best first: cells that are the maximum of their neighbourhood
    (a square of side 2·⌈min_distance/stride⌉+1 cells) with value ≥ threshold, then greedy NMS: a peak within
    `min_distance` pixels (inclusive) of a better kept one is dropped, so kept peaks lie more than min_distance apart
    (equal values: the first in row-major order wins). yx are pixel centres of the cells ((i + 0.5)·stride).
    """
    heat = np.asarray(heat, np.float32)
    window = 2 * max(math.ceil(min_distance / stride), 0) + 1
    mask = np.asarray(local_maxima(jnp.asarray(heat), window)) & (heat >= threshold)
    cells = np.argwhere(mask)
    yx, scores = (cells + 0.5) * stride, heat[mask]
    kept = non_max_suppression(yx, scores, min_distance)
    return yx[kept].astype(np.float64).reshape(-1, 2), scores[kept].astype(np.float64)
