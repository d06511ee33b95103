"""A run's per-epoch figures as TensorBoard event files (``tensorboard
--logdir runs/``), one point per epoch. Written by tensorboardX's synchronous
``EventsWriter`` (no TensorFlow): its ``SummaryWriter`` writes from a thread,
where a full disk would end in a traceback instead of a WriteError."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Callable

from s7jax.runs import runfiles
from s7jax.errors import WriteError

# metrics.jsonl key -> TensorBoard tag
TAGS = {"train_loss": "loss/train", "test_loss": "loss/test", "train_acc": "accuracy/train",
        "test_acc": "accuracy/test", "lr": "learning_rate"}


@contextlib.contextmanager
def epoch_events(workdir: Path, log: Callable[[str], None] = print):
    """``write(row, steps)``; a run that ends before an epoch leaves no file."""
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto.event_pb2 import Event
        from tensorboardX.summary import scalar
    except ImportError:
        log("note: tensorboardX does not import here, so no TensorBoard files are written "
            "(pip install tensorboardX)")
        yield lambda row, steps: None
        return
    folder = Path(workdir) / runfiles.TENSORBOARD
    writer = None

    def write(row: dict[str, Any], steps: int) -> None:
        nonlocal writer
        values = {tag: row[key] for key, tag in TAGS.items()}
        values["time/ms_per_step"] = 1000 * row["seconds"] / max(steps, 1)
        try:
            if writer is None:
                folder.mkdir(exist_ok=True)
                # A resumed run adds its own file, even within the same second.
                writer = EventsWriter(str(folder / "events"), filename_suffix=f".{time.time_ns()}")
            for tag, value in values.items():
                writer.write_event(Event(wall_time=time.time(), step=int(row["epoch"]),
                                         summary=scalar(tag, float(value))))
            writer.flush()
        except OSError as e:
            raise WriteError(f"could not write TensorBoard events in {folder}: "
                             f"{e.strerror or e}") from None

    try:
        yield write
    finally:
        if writer is not None:
            with contextlib.suppress(OSError):
                writer.close()
