"""Peaks of a heat map: local maxima above a threshold, thinned to a minimum distance (greedy by score)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from lmc_jax.detection.heatmap import local_maxima
from lmc_jax.evaluate.kernels.detection import non_max_suppression


def find_peaks(heat: np.ndarray, threshold: float, min_distance: float, stride: int = 1
               ) -> tuple[np.ndarray, np.ndarray]:
    """(yx, scores) of the peaks of `heat` [H, W], best first: cells that are the maximum of their 3 × 3
    neighbourhood (plateaus included) with value ≥ threshold, then greedy NMS: a peak within `min_distance` pixels
    (Euclidean, inclusive) of a better kept one is dropped, so kept peaks lie more than min_distance apart (equal
    values: the first in row-major order wins). yx are pixel centres of the cells ((i + 0.5)·stride).

    A square max-filter of side 2·min_distance would also drop a peak diagonally farther than min_distance from a
    better one; the Euclidean distance is left to the NMS.
    """
    heat = np.asarray(heat, np.float32)
    mask = np.asarray(local_maxima(jnp.asarray(heat), 3)) & (heat >= threshold)
    cells = np.argwhere(mask)
    yx, scores = (cells + 0.5) * stride, heat[mask]
    kept = non_max_suppression(yx, scores, min_distance)
    return yx[kept].astype(np.float64).reshape(-1, 2), scores[kept].astype(np.float64)
