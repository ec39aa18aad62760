"""Orbax checkpoints of the train state, the data-iterator position and run metadata.

Saves are atomic (orbax writes a temporary directory, then renames), so a run killed mid-save
leaves the previous checkpoint intact. A checkpoint that fails to restore is never overwritten
or deleted: it is moved aside to `<step>.unrestorable` and the next older one is tried.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from lmc_jax.errors import UserError

CORRUPT_SUFFIX = ".unrestorable"


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
        moved aside with a warning that names them.
        """
        for step in reversed(self.all_steps()):
            try:
                return step, *self._restore(step, abstract_state, data_iter)
            except Exception as error:  # noqa: BLE001 - any failure means this step is unusable
                self._set_aside(step, error)
        return None

    def restore(self, step: int, abstract_state: Any, data_iter: Any | None = None) -> tuple[Any, dict]:
        """Restores one step; raises CheckpointError naming the directory when it cannot."""
        if step not in self.all_steps():
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory} (steps present: {self.all_steps()})"
            )
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
            source, type(error).__name__, error, target,
        )
        self._manager.reload()

    def wait(self) -> None:
        """Blocks until pending async saves are on disk (call before exit)."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
