"""The safety of a training workdir: one run at a time, and a config change never throws a run away.

* `check_config(workdir, config, signature)`: the workdir's config.json against the new config. Keys whose
  change alters the train state's tree or shapes (found honestly: `signature(config)` is the abstract state,
  and each differing key is put back to its old value to see whether the shapes follow) make resuming
  impossible → `WorkdirError` naming them and the fix. Other differing keys are logged as a warning.
* `move_aside(workdir)`: what `--config.resume=False` does to a workdir holding a run: every entry moves to
  `<workdir>/previous-<UTC timestamp>/` (still a loadable run); nothing is deleted.
* `WorkdirLock`: `<workdir>/lock.json` (holder host, pid, start time, heartbeat) taken by process 0 for the
  whole run and released on any exit. A second live run is refused in one line naming the holder. The lock is
  an `flock` on that file plus its record: a lock whose holder died on this host (pid gone, or the pid now
  belongs to a process started at another time) is stale, and so is another host's lock whose heartbeat
  (rewritten every `HEARTBEAT_SEC`) is older than `STALE_AFTER_SEC`; a stale lock is taken over with a warning.
  Cloud workdirs (gs://...) cannot be locked this way: a warning says so and the run goes on unlocked.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from typing import Any, Callable

import ml_collections
from etils import epath

from lmc_jax.config_edit import with_values
from lmc_jax.errors import UserError

LOCK = "lock.json"
CONFIG = "config.json"
PREVIOUS = "previous-"  # prefix of the folders `move_aside` makes
HEARTBEAT_SEC = 60.0  # how often a holder rewrites its lock record's heartbeat
STALE_AFTER_SEC = 15 * 60.0  # another host's lock with no heartbeat for this long is stale (taken over)
IGNORED_KEYS = ("resume", "compilation_cache_dir")  # keys that say how to start, not what the run is


class WorkdirError(UserError):
    """A workdir that this run cannot use as it is (held by another run, or a run of another shape)."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def _as_plain(config: ml_collections.ConfigDict | dict) -> dict:
    """JSON's view of a config (tuples become lists), so a config and its config.json compare equal."""
    text = config.to_json_best_effort() if isinstance(config, ml_collections.ConfigDict) else json.dumps(config)
    return json.loads(text)


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _with(config: ml_collections.ConfigDict, values: dict[str, Any]) -> ml_collections.ConfigDict:
    """A copy of `config` with the dotted keys of `values` set (JSON lists back to tuples)."""
    return with_values(config, {key: _tuples(value) for key, value in values.items()})


def structural_keys(old: dict, new: ml_collections.ConfigDict, signature: Callable[[Any], Any]) -> list[str]:
    """The keys, among those that differ between `old` (a config.json) and `new`, that change the state's
    tree or shapes: a key is named when putting it back to its old value changes `signature`; when no single key
    does but all of them together do (an interaction), all differing keys are named."""
    before, after = _flatten(_as_plain(old)), _flatten(_as_plain(new))
    common = [k for k in sorted(set(before) & set(after)) if before[k] != after[k] and k not in IGNORED_KEYS]
    if not common:
        return []
    reference = signature(new)

    def changes(keys: list[str]) -> bool:
        try:
            return signature(_with(new, {k: before[k] for k in keys})) != reference
        except Exception:  # noqa: BLE001 - the old value cannot even build a state: it is not resumable either
            return True

    named = [key for key in common if changes([key])]
    return named or (common if changes(common) else [])


def differing_keys(old: dict, new: ml_collections.ConfigDict) -> list[str]:
    """Dotted keys whose values differ (or exist on one side only) between a config.json and a config."""
    before, after = _flatten(_as_plain(old)), _flatten(_as_plain(new))
    return [k for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k) and k not in IGNORED_KEYS]


def check_config(workdir: epath.PathLike, config: ml_collections.ConfigDict, signature: Callable[[Any], Any],
                 has_checkpoints: bool) -> None:
    """Refuses (WorkdirError) a config whose state cannot resume the workdir's checkpoints; warns about the rest.

    `signature(config)` must describe the train state's tree and shapes (e.g. `jax.eval_shape` of it)."""
    path = epath.Path(workdir) / CONFIG
    if not path.exists():
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        logging.warning("%s is not valid JSON; it will be rewritten", path)
        return
    changed = differing_keys(old, config)
    if not changed:
        return
    fatal = structural_keys(old, config, signature) if has_checkpoints else []
    before, after = _flatten(_as_plain(old)), _flatten(_as_plain(config))
    if fatal:
        detail = ", ".join(f"{k} (was {before[k]!r}, now {after[k]!r})" for k in fatal)
        raise WorkdirError(
            f"--workdir {epath.Path(workdir)} holds a run whose model/optimiser state differs from this config's in "
            f"{detail}: it cannot be resumed. Use a new --workdir, or --config.resume=False to move the old run to "
            f"{epath.Path(workdir) / PREVIOUS}<timestamp>/ and start afresh."
        )
    logging.warning("resuming %s with changed settings: %s", workdir,
                    ", ".join(f"{k}: {before.get(k, '<unset>')!r} → {after.get(k, '<unset>')!r}" for k in changed))


def move_aside(workdir: epath.PathLike, keep: tuple[str, ...] = ()) -> epath.Path | None:
    """Moves the run in `workdir` (every entry but the lock, earlier `previous-*` folders and the names in `keep`,
    such as the compilation cache in use) to `<workdir>/previous-<UTC timestamp>/`; returns that folder, or None
    when there was nothing to move."""
    workdir = epath.Path(workdir)
    entries = [p for p in workdir.iterdir()
               if p.name != LOCK and not p.name.startswith(PREVIOUS) and p.name not in keep]
    if not entries:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    target, index = workdir / f"{PREVIOUS}{stamp}", 1
    while target.exists():
        target, index = workdir / f"{PREVIOUS}{stamp}.{index}", index + 1
    target.mkdir()
    for entry in entries:
        entry.rename(target / entry.name)
    logging.warning("config.resume=False: moved the previous run in %s to %s (nothing was deleted)", workdir, target)
    return target


def _process_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot, from Linux /proc); None when gone, a zombie
    or unknown (no /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[-1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]  # the state, then field 22 of the line: starttime


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return _process_start(pid) is not None or not os.path.isdir("/proc/self")


def holder_alive(record: dict, now: float | None = None) -> bool:
    """Whether the run that wrote `record` may still be running (see the module docstring for the rules)."""
    now = time.time() if now is None else now
    if record.get("host") != socket.gethostname():
        return now - float(record.get("heartbeat", record.get("started", 0))) < STALE_AFTER_SEC
    pid = int(record.get("pid", -1))
    if pid <= 0 or not _pid_alive(pid):
        return False
    recorded = record.get("pid_start")
    return recorded is None or _process_start(pid) == str(recorded)  # else the pid was reused


def describe(record: dict) -> str:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(record.get("started", 0))))
    return f"host {record.get('host', '?')}, pid {record.get('pid', '?')}, started {started}"


class WorkdirLock:
    """`<workdir>/lock.json`, held from `acquire()` to `release()` (see the module docstring)."""

    def __init__(self, workdir: epath.PathLike):
        self.path = epath.Path(workdir) / LOCK
        self._fd: int | None = None
        self._record: dict = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        """Takes the lock, or raises WorkdirError naming the live holder; a stale lock is taken over."""
        if "://" in str(self.path):
            logging.warning("%s is not on a local file system: it cannot be locked; make sure one run uses it", self.path)
            return
        for _ in range(5):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                record = self._read(fd)
                os.close(fd)
                raise self._busy(record) from None
            try:
                same_file = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same_file = False
            if not same_file:  # the holder released (unlinked) it between our open and flock: try again
                os.close(fd)
                continue
            record = self._read(fd)
            if record and holder_alive(record):  # a holder the flock cannot see (e.g. another host's NFS client)
                os.close(fd)
                raise self._busy(record)
            if record:
                logging.warning("taking over the stale lock %s (%s, no longer running)", self.path, describe(record))
            self._fd = fd
            now = time.time()
            self._record = dict(host=socket.gethostname(), pid=os.getpid(), pid_start=_process_start(os.getpid()),
                                started=now, heartbeat=now)
            self._write()
            self._thread = threading.Thread(target=self._beat, name="workdir-lock-heartbeat", daemon=True)
            self._thread.start()
            return
        raise WorkdirError(f"could not lock {self.path}: it keeps being replaced; is another run starting there?")

    def release(self) -> None:
        """Stops the heartbeat, removes the lock file and drops the flock (a no-op when not held)."""
        if self._fd is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None

    def _busy(self, record: dict) -> WorkdirError:
        who = describe(record) if record else "a process that has not written its record yet"
        return WorkdirError(
            f"--workdir {self.path.parent} is in use by another training run ({who}; lock {self.path}): wait for it "
            "to finish or stop it, or use another --workdir. A lock whose holder has died is taken over automatically."
        )

    @staticmethod
    def _read(fd: int) -> dict:
        try:
            text = os.pread(fd, 1 << 16, 0).decode()
            return json.loads(text) if text.strip() else {}
        except (OSError, ValueError):
            return {"host": "?", "pid": "?"}

    def _write(self) -> None:
        data = json.dumps(self._record).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)
        os.fsync(self._fd)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SEC):
            self._record["heartbeat"] = time.time()
            try:
                self._write()
            except OSError as error:  # a full disk must not kill the run
                logging.warning("could not refresh the heartbeat of %s: %s", self.path, error)

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
