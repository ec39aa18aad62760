"""Training metrics out: a JSON-lines file, TensorBoard scalars, and a progress bar or a log line per write.

Paths go through etils.epath, so `--workdir gs://bucket/run` works. Object stores cannot append to a file
(and TensorBoard's event writer appends), so for a remote workdir both files are written in a local temporary
folder and copied whole to `workdir` after every write and on close; an existing remote metrics.jsonl is
downloaded first, so a resumed run appends to it. A local workdir is written in place.

A run resumed from step S recomputes the steps after S that a kill lost: their old rows are dropped from
metrics.jsonl (with a torn last line) and TensorBoard is told the session restarted at S, so no step is
logged twice.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time

from etils import epath
import jax
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter


def is_remote(path: epath.PathLike) -> bool:
    """True for a URI path (gs://, s3://, ...): one that the local file system cannot open."""
    return "://" in str(path)


class _Mirror:
    """A local folder standing in for a remote one: `sync()` copies every file in it to the remote folder."""

    def __init__(self, remote: epath.Path, seed: tuple[str, ...] = ()):
        self.remote = remote
        self.local = epath.Path(tempfile.mkdtemp(prefix="lmc_jax_writers_"))
        for name in seed:  # files the remote folder already holds and this writer extends
            if (remote / name).exists():
                (self.local / name).write_bytes((remote / name).read_bytes())

    def sync(self) -> None:
        for root, _, files in self.local.walk():
            for name in files:
                target = self.remote / (root / name).relative_to(self.local)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes((root / name).read_bytes())

    def close(self) -> None:
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)


def _drop_rows_after(path: epath.Path, step: int) -> None:
    """Rewrites metrics.jsonl without rows of steps > `step` and without a torn (unparsable) line."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    if len(kept) < len(lines):
        logging.info("metrics.jsonl: dropped %d rows after step %d (recomputed on resume)", len(lines) - len(kept), step)
        tmp = path.parent / (path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        tmp.replace(path)


class MetricWriter:
    """Writes scalars to `workdir/metrics.jsonl` and `workdir/tensorboard/` (process 0 only)."""

    def __init__(self, workdir: epath.PathLike, total_steps: int = 0, start_step: int | None = None):
        """`start_step`: the step a resumed run restarts from (rows after it are dropped); None keeps every row."""
        self.enabled = jax.process_index() == 0
        self.total_steps = total_steps
        self.interactive = self.enabled and sys.stderr.isatty()
        self._last_line = ""
        workdir = epath.Path(workdir)
        if self.enabled:
            self._mirror = _Mirror(workdir, seed=("metrics.jsonl",)) if is_remote(workdir) else None
            folder = self._mirror.local if self._mirror else workdir
            if start_step is not None:
                _drop_rows_after(folder / "metrics.jsonl", start_step)
            self._jsonl = (folder / "metrics.jsonl").open("a", encoding="utf-8")
            self._tb = EventFileWriter(str(folder / "tensorboard"))
            if start_step:  # TensorBoard drops the events of steps > start_step written before the restart
                restart = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
                self._tb.add_event(event_pb2.Event(step=start_step, wall_time=time.time(), session_log=restart))

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
        if self._mirror:
            self._mirror.sync()
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
            if self._mirror:
                self._mirror.close()
