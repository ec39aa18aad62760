"""Entry point: `python -m lmc_jax.main --config configs/X.py --workdir DIR [--config.key=value ...]`.

Flags and dispatch only: `train` trains LMC, the references the config asks for, then
evaluates; `evaluate` evaluates an existing run; `export` writes timm weights; `normalize`
stain-normalises a folder of tiles.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from etils import epath
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).")
PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what schedulers expect from a terminated job

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and the evaluation report.")


class _QuietLibraries(logging.Filter):
    """Keeps this project's INFO lines and every warning; drops installed libraries' INFO chatter (orbax, grain)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "site-packages" not in record.pathname


def main(argv: list[str]) -> None:
    """Runs config.mode; a bad value the modes detect ends the run with one line naming it, no traceback."""
    from lmc_jax.checkpoint import CheckpointError
    from lmc_jax.configlib import ConfigError
    from lmc_jax.evaluate.extra_encoders import ExtraEncoderError
    from lmc_jax.export.cli import ExportError
    from lmc_jax.export.timm import TimmWeightsError
    from lmc_jax.stain.normalize_cli import NormalizeError

    try:
        _dispatch(argv)
    except (CheckpointError, ConfigError, ExportError, ExtraEncoderError, TimmWeightsError, NormalizeError) as error:
        sys.exit(f"error: {error}")


def _dispatch(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}; settings go through --config.key=value")
    for handler in logging.getLogger().handlers:
        handler.addFilter(_QuietLibraries())
    import jax

    from lmc_jax import configlib, parallel
    from lmc_jax import experiment
    from lmc_jax.preemption import Preempted

    config = _CONFIG.value
    if config.mode == "export":  # its own small config: no training fields
        from lmc_jax.export import cli as export_cli

        export_cli.main(config, _WORKDIR.value)
        return
    if config.mode == "normalize":  # a folder of tiles in, normalised tiles out; no workdir
        from lmc_jax.stain import normalize_cli

        normalize_cli.validate(config)
        normalize_cli.run(config)
        return
    if not _WORKDIR.value:
        raise app.UsageError(f"--workdir is required for mode={config.mode!r}")
    configlib.validate(config)
    parallel.maybe_initialize_distributed(config)
    logging.info("devices: %s", jax.devices())
    workdir = epath.Path(_WORKDIR.value)
    if config.mode == "train":
        try:
            experiment.train_and_evaluate(config, workdir)
        except Preempted as preempted:
            logging.warning("%s", preempted)
            sys.exit(PREEMPTED_EXIT_CODE)
    elif config.mode == "evaluate":
        experiment.evaluate_workdir(config, epath.Path(config.eval.checkpoint), workdir)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    logging.getLogger().setLevel(logging.INFO)
    app.run(main)
