"""A run's train state and a JSON record of where it stood (epoch, a partial
epoch's metric sums, the history), saved with Orbax: all ``--resume`` needs.
A failed save leaves no half-written checkpoint; an unreadable one falls back
to the one before."""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

import orbax.checkpoint as ocp

from s7jax.runs.checksum import arrays_match, arrays_sha256, record_sha256
from s7jax.errors import CheckpointError, WriteError

# What Python says of an asyncio coroutine collected before it ran.
_UNAWAITED = r"coroutine '.*' was never awaited"
KEEP = 2  # the last completed epoch's state and the one before it
# In the record, checked on restore where present (older checkpoints lack the second).
CHECKSUM_KEY, RECORD_KEY = "arrays_sha256", "record_sha256"
# Orbax's words for a tree or shape that differs from the target's.
_MISMATCH = ("shape", "structure", "mismatch", "not match", "missing key", "unexpected key", "keys")


def _manager(directory: str | Path) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        Path(directory).absolute(),
        options=ocp.CheckpointManagerOptions(max_to_keep=KEEP, create=True,
                                             enable_async_checkpointing=False),
    )


def _reason(e: BaseException) -> str:
    """One short line from an exception of Orbax, TensorStore or the OS."""
    seen = e
    while seen is not None:  # an OS error anywhere in the chain says it best
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    code = re.search(r"os_error_code='(\d+)'", str(e))  # TensorStore's way of saying it
    if code:
        return os.strerror(int(code.group(1)))
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    text = (lines[0] if lines else type(e).__name__).split(". See full")[0].rstrip(":. ")
    if re.search(r"error (while )?reading|OUT_OF_RANGE|DATA_LOSS", text, re.IGNORECASE):
        text = "its array files cannot be read"
    return text if len(text) <= 160 else text[:157] + "..."


def _is_leftover(unraisable) -> bool:
    if (isinstance(unraisable.exc_value, RuntimeError)
            and "Event loop is closed" in str(unraisable.exc_value)):
        return True
    # One of Orbax's read coroutines, failed and closed by the collector.
    code = getattr(unraisable.object, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


class _Leftovers(logging.Filter):
    """Log records about a failure that is raised anyway."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
        return not (from_orbax or "exception was never retrieved" in record.getMessage())


@contextlib.contextmanager
def _leftovers_silenced():
    """Keep Orbax's after-effects of a failed save or restore (unretrieved
    futures, unawaited coroutines, absl tracebacks: dozens for one fault the
    caller reports in one line) off stderr, from the first failure on: the
    filters not yet in place are installed, and removed again after a success."""
    added = []
    for name in ("asyncio", "absl"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Leftovers) for f in logger.filters):
            added.append((logger, _Leftovers()))
            logger.addFilter(added[-1][1])
    previous_hook = sys.unraisablehook
    installed = not getattr(previous_hook, "drops_orbax_leftovers", False)
    if installed:
        def hook(unraisable):
            if not _is_leftover(unraisable):
                previous_hook(unraisable)

        hook.drops_orbax_leftovers = True
        sys.unraisablehook = hook
    warned = not any(f[0] == "ignore" and f[1] is not None and f[1].pattern == _UNAWAITED
                     for f in warnings.filters)
    if warned:
        warnings.filterwarnings("ignore", message=_UNAWAITED, category=RuntimeWarning)
        unawaited = warnings.filters[0]
    try:
        yield
    except BaseException:
        gc.collect()  # most of the failed futures, collected (and dropped) now
        raise
    for logger, f in added:
        logger.removeFilter(f)
    if installed and sys.unraisablehook is hook:
        sys.unraisablehook = previous_hook
    if warned and unawaited in warnings.filters:
        warnings.filters.remove(unawaited)


def _remove_partial(directory: Path) -> None:
    """Orbax writes into ``*.orbax-checkpoint-tmp*`` folders, renamed at the end."""
    if directory.is_dir():
        for tmp in directory.glob("*.orbax-checkpoint-tmp*"):
            shutil.rmtree(tmp, ignore_errors=True)


def save(directory: str | Path, step: int, state: Any, record: dict[str, Any]) -> None:
    """Checkpoint ``step`` (replacing one there); the record checksums the arrays and itself."""
    directory = Path(directory)
    record = {**record, CHECKSUM_KEY: arrays_sha256(state)}
    record[RECORD_KEY] = record_sha256(record)
    _remove_partial(directory)  # a save killed before its rename: never to be read
    try:
        with _leftovers_silenced(), _manager(directory) as manager:
            if step in manager.all_steps():
                manager.delete(step)
            manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))
    except Exception as e:  # noqa: BLE001  (Orbax wraps the OS error in its own types)
        _remove_partial(directory)
        raise WriteError(f"could not save checkpoint step {step} in {directory}: "
                         f"{_reason(e)}") from None


def all_steps(directory: str | Path) -> list[int]:
    if not Path(directory).is_dir():
        return []
    with _manager(directory) as manager:
        return sorted(manager.all_steps())


def latest_step(directory: str | Path) -> int | None:
    return (all_steps(directory) or [None])[-1]


def restore(directory: str | Path, abstract_state: Any, step: int | None = None,
            log: Callable[[str], None] | None = None):
    """``(state, record)`` of checkpoint ``step``, else the latest intact (``log``: one passed over)."""
    directory = Path(directory)
    try:
        steps = all_steps(directory) if step is None else [step]
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"cannot read the checkpoints in {directory}: {_reason(e)}") from None
    if not steps:
        raise CheckpointError(f"no checkpoint in {directory}")
    damaged = []
    for candidate in reversed(steps):
        try:
            with _leftovers_silenced(), _manager(directory) as manager:
                restored = manager.restore(candidate, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), record=ocp.args.JsonRestore()))
            state, record = restored["state"], restored["record"]
        except Exception as e:  # noqa: BLE001
            reason = _reason(e)
            if any(word in reason.lower() for word in _MISMATCH):
                raise CheckpointError(
                    f"checkpoint step {candidate} in {directory} does not fit the model and "
                    f"optimiser its run's config.json names ({reason})") from None
            damaged.append((candidate, reason))
            continue
        saved_sum = record.pop(RECORD_KEY, None)
        if saved_sum is not None and record_sha256(record) != saved_sum:
            damaged.append((candidate, "its record does not match the checksum saved with it"))
            continue
        saved_sum = record.pop(CHECKSUM_KEY, None)
        if saved_sum is not None and not arrays_match(state, saved_sum):
            damaged.append((candidate, "its arrays do not match the checksum saved with them"))
            continue
        if damaged and log is not None:
            log(f"checkpoint step {damaged[0][0]} in {directory} is damaged ({damaged[0][1]}); "
                f"restored step {candidate}, the one before it")
        return state, record
    raise CheckpointError(f"no intact checkpoint in {directory} ("
                          + "; ".join(f"step {s}: {r}" for s, r in damaged) + ")")
