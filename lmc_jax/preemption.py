"""SIGTERM → finish the current step, checkpoint it, exit: what preemptible TPU/GPU jobs need."""

from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class Preempted(Exception):
    """Raised after the final checkpoint of a run that received SIGTERM; rerun the command to resume."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint saved at step {step}; run the same command again to resume")
        self.step = step


class PreemptionWatch:
    """Remembers a SIGTERM; `requested()` is agreed by every process so they all stop at the same step."""

    def __init__(self) -> None:
        self._flag = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._flag = True

    def requested(self) -> bool:
        if jax.process_count() == 1:
            return self._flag
        flags = multihost_utils.process_allgather(np.asarray(self._flag))
        return bool(np.any(flags))

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
