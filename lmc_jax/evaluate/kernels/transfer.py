"""Source → target transfer of a linear probe: fit on source data, choose the F1 threshold on SOURCE validation.

Target labels never enter here: callers score targets with the returned probe and threshold.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from lmc_jax.evaluate.kernels import probe
from lmc_jax.evaluate.kernels.calibration import f1_threshold

DEFAULT_THRESHOLD = 0.5  # used (and reported) when source validation cannot pick an F1 threshold


class SourceProbe(NamedTuple):
    """A probe fit on source data and the decision threshold chosen on source validation data."""

    params: probe.ProbeParams
    threshold: float
    threshold_note: str | None  # why the default threshold was used, if it was
    n_fit: int
    n_val: int


def split_validation(y: np.ndarray, groups: np.ndarray | None, fraction: float,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) row indices: whole groups (patients) go to validation until `fraction` of rows is reached.

    Without groups (or with fewer than 2), rows are split per class so both classes reach validation.
    """
    n = len(y)
    units = None if groups is None else np.asarray(groups)
    if units is not None and len(np.unique(units)) >= 2:
        order = rng.permutation(np.unique(units))
        sizes = np.array([np.sum(units == g) for g in order])
        take = max(1, min(len(order) - 1, int(np.searchsorted(np.cumsum(sizes), fraction * n)) + 1))
        val = np.isin(units, order[:take])
    else:
        val = np.zeros(n, bool)
        for label in np.unique(y):
            rows = rng.permutation(np.flatnonzero(y == label))
            val[rows[: int(round(fraction * len(rows)))]] = True
    return np.flatnonzero(~val), np.flatnonzero(val)


def fit_source_probe(x_fit: np.ndarray, y_fit: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     l2: float, init: probe.ProbeParams | None = None) -> SourceProbe | str:
    """Fit the L2 logistic probe on (x_fit, y_fit), pick the F1-optimal threshold on (x_val, y_val).

    `init` warm-starts the fit (see `probe.fit_logistic`). Returns the reason instead when the fit set lacks a class.
    """
    classes = np.unique(y_fit).tolist()
    if classes != [0, 1]:
        return f"probe not fit: source fit labels are {classes}, need both 0 and 1"
    params = probe.fit_logistic(x_fit, y_fit, l2, init=init)
    threshold, note = DEFAULT_THRESHOLD, "no validation examples in the training domain(s); threshold 0.5"
    if len(y_val):
        chosen = f1_threshold(y_val, np.asarray(probe.predict_proba(params, x_val)))
        if isinstance(chosen, probe.Undefined):
            note = f"training-domain {chosen.reason}; threshold 0.5"
        else:
            threshold, note = chosen, None
    return SourceProbe(params, threshold, note, len(y_fit), len(y_val))
