"""Entry point: `python -m lmc_jax.main --config configs/X.py --workdir DIR [--config.key=value ...]`.

Flags and dispatch only: `config.mode` names a module of `lmc_jax.modes` (MODES: train, evaluate, export,
normalize, embed, detection, wilds, lomo), which validates the config and runs. A user's mistake ends the run with
one line, `error: ...`, naming the bad key, value or file and the fix: a `UserError` (or a data pipeline's
`DataError`), an unknown `--config.key`, a value of the wrong type, a missing `--config` file, a disk that is
full. `--debug` (or `LMC_JAX_DEBUG=1`) shows the full traceback instead. A preempted training run exits 143
after checkpointing.
"""

from __future__ import annotations

import difflib
import errno
import importlib
import logging
import os
import runpy
import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the evaluation report.")
_DEBUG = flags.DEFINE_bool("debug", False, "Show full tracebacks of user errors (also: LMC_JAX_DEBUG=1).")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job
MODES = ("train", "evaluate", "export", "normalize", "embed", "detection", "wilds", "lomo")  # modules of lmc_jax.modes
DEBUG_ENV = "LMC_JAX_DEBUG"  # set to 1 for full tracebacks (the --debug flag, readable before flags parse)


class _QuietLibraries(logging.Filter):
    """Keeps this project's INFO lines and every warning; drops installed libraries' INFO chatter (orbax, grain)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "site-packages" not in record.pathname


def _debugging(argv: list[str] = ()) -> bool:
    if os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes"):
        return True
    if flags.FLAGS.is_parsed():
        return _DEBUG.value
    return any(arg in ("--debug", "--debug=true", "--debug=True", "--debug=1") for arg in argv)


def _config_path(argv: list[str]) -> str:
    """The value of --config on the command line ('' when absent)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return ""


def _overrides(argv: list[str]) -> list[str]:
    """The keys of the --config.KEY=VALUE arguments, in order."""
    return [arg[len("--config."):].split("=", 1)[0] for arg in argv if arg.startswith("--config.")]


def _load_config(path: str):
    """The config `path` defines (its `get_config()`), for naming keys and types in messages; None on failure."""
    try:
        file, *args = path.split(":", 1)
        return runpy.run_path(file)["get_config"](*args)
    except Exception:  # pylint: disable=broad-except - only used to word an error message
        return None


def _lookup(config, key: str):
    """(parent ConfigDict, last key) of dotted `key` in `config`, or (None, key) when a parent is missing."""
    *parents, last = key.split(".")
    for part in parents:
        if config is None or not hasattr(config, "keys") or part not in config:
            return None, last
        config = config[part]
    return (config if hasattr(config, "keys") else None), last


def _unknown_key(argv: list[str], missing: str) -> str:
    """The message for an override naming a key the config does not have."""
    path = _config_path(argv)
    config = _load_config(path)
    for key in _overrides(argv):
        parent, last = _lookup(config, key)
        known = parent is not None and last in parent
        if known or (config is None and missing not in key.split(".")):
            continue
        head = key.rsplit(".", 1)[0] if "." in key else ""
        where = f"config.{head}" if head else "config"
        close = difflib.get_close_matches(last, list(parent.keys()), n=1) if parent is not None else []
        hint = f"did you mean --config.{head + '.' if head else ''}{close[0]}?" if close else (
            f"the keys of {where} are {', '.join(sorted(parent.keys()))}" if parent is not None
            else f"{where} does not exist in {path}")
        return f"--config.{key}: {path} has no key config.{key}; {hint}"
    return f"--config.{missing}: {path} has no such key; check the spelling against {path}"


def _flag_error(argv: list[str], error: flags.Error) -> str:
    """absl's flag error as a message naming the flag and the fix."""
    text = str(error).strip().splitlines()[0]
    if "--config must have a value other than None" in text or "--config=None" in text:
        return "--config is missing: pass a config file, e.g. --config configs/default.py (the files are in configs/)"
    if text.startswith("--config.") and ": give a tuple of " in text:
        return text
    if text.startswith("flag --config.") and ":" in text:
        flag, reason = text[len("flag "):].split(": ", 1)
        key = flag[len("--config."):].split("=", 1)[0]
        parent, last = _lookup(_load_config(_config_path(argv)), key)
        if parent is None or last not in parent:
            return f"{flag}: {reason}; give config.{key} a value of the type its default has"
        default = parent[last]
        if hasattr(default, "keys"):
            return f"{flag}: {reason}; config.{key} is a group: set its keys one at a time (--config.{key}.<key>=...)"
        return f"{flag}: {reason}; give config.{key} a value of type {type(default).__name__}, like its default {default!r}"
    return f"{text} (see --helpshort)"


def _tuple_of_wrong_type(argv: list[str]) -> str | None:
    """The message for a tuple override whose items are not of its default's item type (config_flags keeps
    `--config.model.projector_dims=abc` as ('abc',)); None when every override fits."""
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    tuples = {key: value for key, value in overrides.items() if isinstance(value, tuple)}
    config = _load_config(_config_path(argv)) if tuples else None
    for key, value in tuples.items():
        parent, last = _lookup(config, key)
        default = parent[last] if parent is not None and last in parent else None
        kinds = {type(item) for item in default} if isinstance(default, tuple) else set()
        if len(kinds) != 1 or (kind := kinds.pop()) not in (int, float, str, bool):
            continue
        fits = (kind,) if kind in (str, bool) else (int, float) if kind is float else (int,)
        if not all(isinstance(item, fits) and (kind is bool or not isinstance(item, bool)) for item in value):
            return f"--config.{key}={value!r}: give a tuple of {kind.__name__}, like its default {default!r}"
    return None


def _missing_config_file(argv: list[str]) -> str:
    path = _config_path(argv)
    return f"--config {path}: no such file; pass a config file, e.g. --config configs/default.py (the files are in configs/)"


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with every mistake on the command line turned into one `error:` line."""
    try:
        remaining = flags.FLAGS(argv)
        if _CONFIG.value is not None:
            _CONFIG.value.get("mode")  # a config file that failed to load raises here, not at parse time
            wrong = _tuple_of_wrong_type(argv)
            if wrong is not None:
                raise flags.IllegalFlagValueError(wrong)
        return remaining
    except Exception as error:  # pylint: disable=broad-except - mapped to a message or re-raised
        if _debugging(argv):
            raise
        if isinstance(error, flags.Error):
            message = _flag_error(argv, error)
        elif isinstance(error, OSError) and "failure to load" in str(error) and "No such file" in str(error):
            message = _missing_config_file(argv)
        elif isinstance(error, (AttributeError, KeyError)) and _overrides(argv):
            message = _unknown_key(argv, str(error).strip("'\""))
        else:
            raise
        sys.exit(f"error: {message}")


def _chain(error: BaseException | None):
    """`error` and its causes and contexts, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _no_space(error: BaseException) -> OSError | None:
    """The OSError(ENOSPC) in `error`'s chain, or one made from an error whose text says so (TensorStore's
    checkpoint writes report ENOSPC as text); None when the disk is not full."""
    for link in _chain(error):
        if isinstance(link, OSError) and link.errno == errno.ENOSPC:
            return link
    for link in _chain(error):
        if "No space left on device" in str(link):
            return OSError(errno.ENOSPC, "No space left on device")
    return None


def no_space_message(error: OSError, workdir: str | None) -> str:
    """One line for a full disk: the path being written and the fix."""
    where = error.filename or workdir or "the output folder"
    return (f"no space left on the device writing {where}: free space there (or point --workdir / config.data.data_dir "
            "at a larger disk) and run the same command again; a training run resumes from its last checkpoint")


def _missing_remote_filesystem(error: BaseException) -> str | None:
    """One line when a gs:// / s3:// path needs an fsspec package that is not installed (gcsfs, s3fs)."""
    text = str(error)
    for package, scheme in (("gcsfs", "gs://"), ("s3fs", "s3://"), ("adlfs", "az://")):
        if isinstance(error, ImportError) and package in text:
            return f"{scheme} paths need the {package} package: pip install {package} (or TensorFlow, whose tf.io.gfile " \
                   "etils.epath then uses), then run the same command again"
    return None


def main(argv: list[str]) -> None:
    """Runs config.mode; a user's mistake ends the run with one line naming it, no traceback (unless --debug)."""
    from data_pipelines.build import DataError
    from lmc_jax.errors import UserError
    from lmc_jax.preemption import Preempted

    try:
        _dispatch(argv)
    except (UserError, DataError) as error:
        if _debugging():
            raise
        sys.exit(f"error: {error}")
    except Preempted as preempted:
        logging.warning("%s", preempted)
        sys.exit(PREEMPTED_EXIT_CODE)
    except Exception as error:  # pylint: disable=broad-except - a full disk or a missing gcsfs is the user's to fix
        full = _no_space(error)
        message = no_space_message(full, _WORKDIR.value) if full is not None else _missing_remote_filesystem(error)
        if message is None or _debugging():
            raise
        sys.exit(f"error: {message}")


def _dispatch(argv: list[str]) -> None:
    from lmc_jax.errors import UserError

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go through --config.key=value")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    config = _CONFIG.value
    if config.get("mode") not in MODES:
        raise UserError(f"config.mode={config.get('mode')!r}: choose one of {MODES}")
    mode = importlib.import_module(f"lmc_jax.modes.{config.mode}")
    mode.validate(config)
    mode.run(config, epath.Path(_WORKDIR.value) if _WORKDIR.value else None)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    logging.getLogger().setLevel(logging.INFO)
    app.run(main, flags_parser=_parse_flags)
