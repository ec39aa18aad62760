"""Entry point: `python -m lmc_jax.main --config configs/X.py --workdir DIR [--config.key=value ...]`.

Flags and dispatch only: `config.mode` names a module of `lmc_jax.modes` (train, evaluate, export,
normalize), which validates the config and runs. A `UserError` ends the run with one line naming the
bad value and the fix; a preempted training run exits 143 after checkpointing.
"""

from __future__ import annotations

import importlib
import logging
import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the evaluation report.")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job
MODES = ("train", "evaluate", "export", "normalize")  # modules of lmc_jax.modes


class _QuietLibraries(logging.Filter):
    """Keeps this project's INFO lines and every warning; drops installed libraries' INFO chatter (orbax, grain)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "site-packages" not in record.pathname


def main(argv: list[str]) -> None:
    """Runs config.mode; a UserError ends the run with one line naming it, no traceback."""
    from lmc_jax.errors import UserError
    from lmc_jax.preemption import Preempted

    try:
        _dispatch(argv)
    except UserError as error:
        sys.exit(f"error: {error}")
    except Preempted as preempted:
        logging.warning("%s", preempted)
        sys.exit(PREEMPTED_EXIT_CODE)


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
    app.run(main)
