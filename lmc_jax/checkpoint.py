"""Orbax checkpoints of the train state, the data-iterator position and run metadata.

Saves are atomic (orbax writes a temporary directory, then renames), so a run killed mid-save
leaves the previous checkpoint intact; the temporaries such a kill leaves (`*.orbax-checkpoint-tmp*`)
are moved to `<checkpoints>/orbax-leftovers/` when a writer opens the directory (never deleted, and
a complete step is never touched). A checkpoint that fails to restore is never overwritten or
deleted: it is moved aside to `<step>.unrestorable` and the next older one is tried. A checkpoint
whose tree or shapes differ from the restore target is not corrupt: that is a config change, and
restoring raises `CheckpointMismatchError` leaving every checkpoint as it is.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from lmc_jax.errors import UserError

CORRUPT_SUFFIX = ".unrestorable"
ORBAX_TMP = ".orbax-checkpoint-tmp"  # orbax's temporary-directory marker (`<name>.orbax-checkpoint-tmp-<ts>`)
LEFTOVERS = "orbax-leftovers"  # where a writer moves orbax temporaries left by a killed run


def _first_line(error: Exception, limit: int = 300) -> str:
    """An error's first line, cut to `limit` characters: orbax's tree mismatches print hundreds of lines."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if len(text) <= limit else text[:limit] + " …"


def absolute(path: epath.PathLike) -> epath.Path:
    """Absolute local path, or the cloud path (gs://...) unchanged: orbax wants absolute directories."""
    text = str(path)
    return epath.Path(text) if "://" in text else epath.Path(os.path.abspath(text))


class CheckpointError(UserError):
    """A run or checkpoint directory that is missing or cannot be used."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose state tree or shapes differ from what the config builds: a config change, not corruption."""


def _flat_shapes(tree: Any) -> dict[str, tuple]:
    """{"params/encoder/...": shape} of a state tree or of orbax's metadata tree (same keys either way)."""
    def name(key) -> str:
        return str(getattr(key, "key", getattr(key, "idx", getattr(key, "name", key))))
    return {"/".join(name(k) for k in path): tuple(getattr(leaf, "shape", ()) or ())
            for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def tree_mismatch(saved: Any, target: Any, limit: int = 3) -> str:
    """'' when both trees have the same leaves and shapes, else a short description of the first differences."""
    saved, target = _flat_shapes(saved), _flat_shapes(target)
    parts = [f"{key}: only in the checkpoint" for key in sorted(set(saved) - set(target))]
    parts += [f"{key}: not in the checkpoint" for key in sorted(set(target) - set(saved))]
    parts += [f"{key}: saved {saved[key]}, expected {target[key]}"
              for key in sorted(set(saved) & set(target)) if saved[key] != target[key]]
    more = f" (+{len(parts) - limit} more)" if len(parts) > limit else ""
    return "; ".join(parts[:limit]) + more


def abstract_like(tree: Any, shardings: Any | None = None) -> Any:
    """ShapeDtypeStructs (with the target shardings) describing `tree`, for restoring into a new layout."""
    if shardings is None:
        return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding), tree, shardings
    )


class Checkpointer:
    """Save/restore of {state, data_iter, meta} under one directory, one subdirectory per step."""

    def __init__(self, directory: epath.PathLike, *, max_to_keep: int = 3, async_save: bool = True,
                 create: bool = True):
        """`create=False` for readers: a missing directory is never made."""
        self.directory = absolute(directory)
        if create:
            self._move_orbax_leftovers()
        self._options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save
        )
        self._manager = ocp.CheckpointManager(self.directory, options=self._options)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iter: Any | None, meta: dict) -> None:
        """Starts an (async) save of step `step`; a step already on disk is left as it is."""
        if step in self._manager.all_steps():
            return
        items = dict(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointSave(data_iter)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_latest(self, abstract_state: Any, data_iter: Any | None) -> tuple[int, Any, dict] | None:
        """Restores the newest restorable step (state into `abstract_state`'s layout, iterator in place).

        Returns (step, state, meta), or None when there is no checkpoint. Unrestorable steps are
        moved aside with a warning that names them. A step whose tree or shapes differ from `abstract_state`
        raises CheckpointMismatchError and nothing is moved: the config changed, the checkpoints are fine.
        """
        for step in reversed(self.all_steps()):
            self.check_matches(step, abstract_state)
            try:
                return step, *self._restore(step, abstract_state, data_iter)
            except Exception as error:  # noqa: BLE001 - any failure means this step is unusable
                self._set_aside(step, error)
        return None

    def check_matches(self, step: int, abstract_state: Any) -> None:
        """Raises CheckpointMismatchError when step `step`'s saved state tree/shapes differ from `abstract_state`.

        Unreadable metadata says nothing about the config: the restore that follows decides (corruption)."""
        try:
            saved = ocp.PyTreeCheckpointHandler().metadata(self.directory / str(step) / "state").tree
        except Exception:  # noqa: BLE001 - a broken checkpoint: the restore reports it
            return
        difference = tree_mismatch(saved, abstract_state)
        if difference:
            raise CheckpointMismatchError(
                f"checkpoint {self.directory / str(step)} holds a different state than this config builds "
                f"({difference}): the config changed the model or optimiser. Use a new --workdir, or "
                "--config.resume=False to move the old run aside and start afresh; the checkpoint was left untouched."
            )

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> tuple[Any, dict]:
        """Restores one step; raises CheckpointError naming the directory when it cannot."""
        if step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (steps present: {self.all_steps()})"
            )
        self.check_matches(step, abstract_state)
        try:
            return self._restore(step, abstract_state, data_iter)
        except Exception as error:
            raise CheckpointError(
                f"checkpoint {self.directory / str(step)} could not be restored ({type(error).__name__}: "
                f"{_first_line(error)}). It was left untouched; pick another step or retrain."
            ) from error

    def _restore(self, step: int, abstract_state: Any, data_iter: Any | None) -> tuple[Any, dict]:
        items = dict(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        if data_iter is not None:
            items["data_iter"] = grain.checkpoint.CheckpointRestore(data_iter)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        return restored.state, dict(restored.meta)

    def _set_aside(self, step: int, error: Exception) -> None:
        source = self.directory / str(step)
        target = source.with_name(f"{step}{CORRUPT_SUFFIX}")
        index = 1
        while target.exists():
            target = source.with_name(f"{step}{CORRUPT_SUFFIX}.{index}")
            index += 1
        if jax.process_index() == 0:
            source.rename(target)
        logging.warning(
            "checkpoint %s could not be restored (%s: %s); moved it to %s and trying an older one",
            source, type(error).__name__, _first_line(error), target,
        )
        self._manager.reload()

    def _move_orbax_leftovers(self) -> None:
        """Moves orbax temporaries a killed save left (in the directory or inside a step) to `LEFTOVERS/`.

        Only names carrying orbax's temporary marker move; complete steps stay where they are."""
        if jax.process_index() != 0 or "://" in str(self.directory) or not self.directory.is_dir():
            return
        candidates = [p for p in self.directory.iterdir() if ORBAX_TMP in p.name]
        candidates += [p for step in self.directory.iterdir() if step.is_dir() and step.name.isdigit()
                       for p in step.iterdir() if ORBAX_TMP in p.name]
        if not candidates:
            return
        aside = self.directory / LEFTOVERS / time.strftime("%Y%m%d-%H%M%S", time.gmtime())
        aside.mkdir(parents=True, exist_ok=True)
        for path in candidates:
            target = aside / str(path.relative_to(self.directory)).replace(os.sep, "__")
            path.rename(target)
            logging.warning("moved the orbax temporary %s (left by an interrupted save) to %s", path, target)

    def wait(self) -> None:
        """Blocks until pending async saves are on disk (call before exit)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
