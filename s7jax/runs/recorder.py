"""What a run writes when an epoch ends.

The checkpoint comes before the rows in ``metrics.jsonl``: a row never names
an epoch whose state was not saved. Ctrl-C and SIGTERM become a flag
(:func:`interrupt_flag`) that the loops check between steps, so a donated
state is never left half-updated."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from s7jax.runs import checkpoint, events, runfiles
from s7jax.training import console
from s7jax.errors import SIGNALLED, Interrupted


def metrics_row(epoch: int, lr: float, train: tuple[float, float], test: tuple[float, float],
                seconds: float) -> dict[str, Any]:
    """A row of ``metrics.jsonl``; ``train``, ``test``: (mean loss, accuracy in percent)."""
    return {"epoch": epoch, "lr": lr, "train_loss": train[0], "train_acc": train[1],
            "test_loss": test[0], "test_acc": test[1], "seconds": seconds}


def checkpoint_record(epoch: int, history: list, partial: dict | None, config) -> dict:
    """``partial``: the metric sums of the epoch under way (None at its end);
    ``config``: the run's, which a resume checks ``config.json`` against."""
    partial = None if partial is None else {k: np.asarray(v).item() for k, v in partial.items()}
    return {"epoch": epoch, "history": history, "partial": partial, "config": config.to_json()}


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
            checkpoint.save(self.checkpoint_dir, step, state,
                            checkpoint_record(row["epoch"], self.history, None, self._config))
        if state is not None or self._config is None:
            self._write_rows()
        if runfiles.writes_files():
            self._write_events(row, steps)
        self.log(self._prefix + console.table_row(row))

    def save_within_epoch(self, state: Any, step: int, epoch: int, partial: dict) -> None:
        """A checkpoint within epoch ``epoch`` (0-based), its steps' metric sums so far."""
        checkpoint.save(self.checkpoint_dir, step, state,
                        checkpoint_record(epoch, self.history, partial, self._config))

    def _write_rows(self) -> None:
        for row in self.history[self._written:]:
            runfiles.append_metrics(self.workdir, row)
        self._written = len(self.history)


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
def interrupt_flag(flag: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Ctrl-C, and SIGTERM (what ``timeout``, a scheduler or a container
    runtime sends), set ``flag["set"]`` and ``flag["signum"]`` (``flag``: from
    :func:`unset_flag`, for what holds it before the signals are caught)."""
    flag = unset_flag() if flag is None else flag
    if SIGNALLED["set"]:  # one whose exception was lost: the run stops at its first chance
        flag.update(SIGNALLED)

    def handler(signum, frame):
        flag["set"], flag["signum"] = True, signum

    handled = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, handler) for s in handled}
    except ValueError:  # not the main thread: no signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def stop_if_interrupted(flag: dict[str, Any], epochs_done: int, epochs: int, step: int,
                        workdir: Path, how: str | None = None) -> None:
    # After an epoch whose checkpoint is saved (after the last, the run is done anyway).
    if flag["set"] and epochs_done < epochs:
        raise Interrupted(step, workdir, how=how, signum=flag["signum"])
