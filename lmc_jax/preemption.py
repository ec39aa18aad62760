"""SIGTERM → finish the current step, checkpoint it, exit: what preemptible TPU/GPU jobs need.

One process: a Python SIGTERM handler sets a flag. Several processes (`jax.distributed`): JAX's coordination
service owns SIGTERM (its preemption notifier), propagates the notice to every host in the background and
agrees on one safe step (`multihost_utils.reached_preemption_sync_point`), so the loop asks a local flag each
step instead of running a collective.
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

from lmc_jax.errors import UserError


class Preempted(Exception):
    """Raised after the final checkpoint of a run that received SIGTERM; rerun the command to resume."""

    def __init__(self, step: int):
        super().__init__(f"preempted: checkpoint saved at step {step}; run the same command again to resume")
        self.step = step


def _sync_manager_ready() -> bool:
    """Whether the coordination service's preemption sync manager runs (it starts with jax.distributed)."""
    from jax._src import distributed  # pylint: disable=import-outside-toplevel

    return distributed.global_state.preemption_sync_manager is not None


class PreemptionWatch:
    """`requested(step)` is True at one step agreed by every process after any of them got SIGTERM."""

    def __init__(self) -> None:
        self._flag = False
        self._previous = None
        self._multihost = jax.process_count() > 1
        if self._multihost and not _sync_manager_ready():
            raise UserError("preemption: jax.distributed runs without its preemption service; "
                            "fix: leave jax_enable_preemption_service on (JAX_ENABLE_PREEMPTION_SERVICE=1)")
        if not self._multihost and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self._flag = True

    def requested(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; every process must call it at every step, from the same start."""
        if self._multihost:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._flag

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
