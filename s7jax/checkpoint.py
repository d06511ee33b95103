"""Saving and restoring a run's train state with Orbax.

A checkpoint holds the whole state (parameters, BatchNorm statistics,
optimizer state, step) and a small JSON record of where the run stood: the
epoch, the metric sums of a partly done epoch, and the history so far. That is
all ``--resume`` needs to continue exactly where the run stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

KEEP = 2  # the last completed epoch's state and the one before it


def _manager(directory: str | Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True,
                                             enable_async_checkpointing=False),
    )


def save(directory: str | Path, step: int, state: Any, record: dict[str, Any]) -> None:
    """Write ``state`` and ``record`` as checkpoint ``step`` (replacing one at that step)."""
    with _manager(directory) as manager:
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))


def latest_step(directory: str | Path) -> int | None:
    if not Path(directory).is_dir():
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def restore(directory: str | Path, abstract_state: Any, step: int | None = None):
    """``(state, record)`` of checkpoint ``step`` (default: the latest), with
    arrays laid out like ``abstract_state`` (e.g. from ``jax.eval_shape``)."""
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {directory}")
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
    return restored["state"], restored["record"]
