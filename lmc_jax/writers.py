"""Training metrics out: a JSON-lines file, TensorBoard scalars, and a progress bar or a log line per write."""

from __future__ import annotations

import json
import logging
import sys
import time

from etils import epath
import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/` (process 0 only)."""

    def __init__(self, workdir: epath.PathLike, total_steps: int = 0):
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.interactive = self.enabled and sys.stderr.isatty()
        self._last_line = ""
        workdir = epath.Path(workdir)
        if self.enabled:
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
            self._tb = EventFileWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        summary = summary_pb2.Summary(
            value=[summary_pb2.Summary.Value(tag=name, simple_value=value) for name, value in scalars.items()]
        )
        self._tb.add_event(event_pb2.Event(step=step, wall_time=time.time(), summary=summary))
        self._tb.flush()
        shown = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        self._last_line = f"loss={scalars.get('loss', float('nan')):.4g} {scalars.get('images_per_sec', 0):.0f} img/s " \
                          f"eta {scalars.get('eta_sec', 0):.0f}s"
        if not self.interactive:
            logging.info("step %d %s", step, shown)

    def progress(self, step: int, metrics) -> None:  # noqa: ARG002 - metrics stay on device; no sync per step
        """A one-line progress bar on a terminal (nothing otherwise: periodic log lines cover that)."""
        if not self.interactive or not self.total_steps:
            return
        width = 30
        filled = int(width * step / self.total_steps)
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total_steps} {self._last_line}")
        if step == self.total_steps:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
