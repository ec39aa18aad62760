"""Training metrics out: a JSON-lines file, TensorBoard scalars, and a log line per write."""

from __future__ import annotations

import json
import logging
import pathlib

import jax
from tensorboardX import SummaryWriter


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/` (process 0 only)."""

    def __init__(self, workdir: str | pathlib.Path):
        self.enabled = jax.process_index() == 0
        workdir = pathlib.Path(workdir)
        if self.enabled:
            self._jsonl = open(workdir / "metrics.jsonl", "a", encoding="utf-8")
            self._tb = SummaryWriter(str(workdir / "tensorboard"))

    def write(self, step: int, scalars: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
        self._jsonl.flush()
        for name, value in scalars.items():
            self._tb.add_scalar(name, value, step)
        shown = " ".join(f"{k}={v:.4g}" for k, v in scalars.items())
        logging.info("step %d %s", step, shown)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tb.close()
