"""Live curves: a run's per-epoch figures as TensorBoard event files.

    tensorboard --logdir runs/

Each run writes ``<workdir>/tensorboard/events.out.tfevents.*`` as its epochs
end: train and test loss and accuracy, the learning rate, and the time per
step (the epoch's wall time, evaluation included, over the steps it trained),
one point per epoch, numbered by epoch. A resumed run adds a file; TensorBoard
reads them as one run.

The events are written by tensorboardX (pure Python, no TensorFlow, so the
``idx`` path writes them too), through its synchronous ``EventsWriter``
rather than its ``SummaryWriter``: the latter writes from a background thread,
where a full disk would end in a thread's traceback instead of the run's one
line. Here a failed write is a WriteError, like the metrics row it follows.
"""

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
    """``write(row, steps)`` for the run in ``workdir``: one metrics row, and
    the steps trained in its epoch (fewer than an epoch's in a resumed one).
    The file is made at the first write, so a run that ends before its first
    epoch leaves none."""
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
