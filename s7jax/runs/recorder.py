"""What a run writes when an epoch ends.

The checkpoint comes before the rows in ``metrics.jsonl``: a row never names
an epoch whose state was not saved. Ctrl-C and SIGTERM become a flag
(:func:`interrupt_flag`) that the loops check between steps (between epochs
where an epoch is one call), so a donated state is never left half-updated."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from s7jax.runs import checkpoint, events, runfiles
from s7jax.training import console
from s7jax.errors import SIGNALLED


class Recorder:
    """One run's rows, checkpoints, TensorBoard points and table lines."""

    def __init__(self, workdir: Path, history: list[dict[str, Any]], log: Callable[[str], None],
                 write_events: Callable[[dict[str, Any], int], None], *, prefix: str, config):
        self.workdir, self.history, self.log = Path(workdir), history, log
        self._write_events, self._prefix, self._config = write_events, prefix, config
        self._written = len(history)  # rows already in metrics.jsonl
        self.checkpoint_dir = runfiles.checkpoint_dir(self.workdir)

    def end_epoch(self, row: dict[str, Any], steps: int, *, state: Any = None,
                  step: int | None = None) -> None:
        """Record ``row``, an epoch of ``steps`` trained steps; ``state``, the
        state after it at ``step``, is saved as its checkpoint (without one,
        the row waits for the next checkpoint, unless the run keeps none)."""
        self.history.append(row)
        if state is not None:
            self.save(state, step, row["epoch"])
        if state is not None or self._config is None:
            for waiting in self.history[self._written:]:
                runfiles.append_metrics(self.workdir, waiting)
            self._written = len(self.history)
        if runfiles.writes_files():
            self._write_events(row, steps)
        self.log(self._prefix + console.table_row(row))

    def save(self, state: Any, step: int, epoch: int, partial: dict | None = None) -> None:
        """A checkpoint at ``step``, ``epoch`` epochs done; ``partial``: the metric sums
        of the epoch under way (None at its end); the run's config, which a resume
        checks ``config.json`` against."""
        partial = None if partial is None else {k: np.asarray(v).item() for k, v in partial.items()}
        checkpoint.save(self.checkpoint_dir, step, state, {
            "epoch": epoch, "history": self.history, "partial": partial,
            "config": self._config.to_json()})


@contextlib.contextmanager
def recording(workdir: Path, history: list[dict[str, Any]], log: Callable[[str], None], *,
              prefix: str = "", config=None) -> Iterator[Recorder]:
    """A :class:`Recorder` for the run in ``workdir`` whose ``metrics.jsonl`` holds ``history``;
    ``prefix`` starts each table line (a seed's column); ``config``: the run's,
    saved in its checkpoints (None: it keeps none)."""
    with events.epoch_events(workdir, log) as write_events:
        yield Recorder(workdir, history, log, write_events, prefix=prefix, config=config)


def unset_flag() -> dict[str, Any]:
    return {"set": False, "signum": signal.SIGINT}


@contextlib.contextmanager
def interrupt_flag(flag: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Ctrl-C, and SIGTERM (what ``timeout``, a scheduler or a container
    runtime sends), set ``flag["set"]`` and ``flag["signum"]`` (``flag``: from
    :func:`unset_flag`, for what holds it before the signals are caught)."""
    if SIGNALLED["set"]:  # one whose exception was lost: the run stops at its first chance
        flag.update(SIGNALLED)

    def handler(signum, frame):
        flag["set"], flag["signum"] = True, signum

    try:
        previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: no signal handling
        previous = {}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
