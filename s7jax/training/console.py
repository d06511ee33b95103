"""What a training run prints: per-epoch progress bars, one aligned table row per epoch."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm

# (key, header, width, format)
COLUMNS = (("epoch", "epoch", 5, "{:>5d}"), ("lr", "lr", 9, "{:>9.2e}"),
           ("train_loss", "train loss", 10, "{:>10.4f}"), ("train_acc", "train acc", 9, "{:>9.2f}"),
           ("test_loss", "test loss", 9, "{:>9.4f}"), ("test_acc", "test acc", 8, "{:>8.2f}"),
           ("seconds", "seconds", 7, "{:>7.1f}"))


def table_header() -> str:
    return "  ".join(f"{title:>{width}}" for _, title, width, _ in COLUMNS)


def table_row(row: dict[str, Any]) -> str:
    return "  ".join(fmt.format(row[key]) for key, _, _, fmt in COLUMNS)


def progress_bar(epoch: int, epochs: int, steps: int, initial: int, enabled: bool):
    return tqdm(total=steps, initial=initial, desc=f"epoch {epoch}/{epochs}", unit="step",
                leave=False, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


def final_line(history: list[dict[str, Any]], total_seconds: float) -> str:
    best, last = max(history, key=lambda r: r["test_acc"]), history[-1]
    return (f"best test acc {best['test_acc']:.2f}% (epoch {best['epoch']}), "
            f"last {last['test_acc']:.2f}% (epoch {last['epoch']}), "
            f"total {total_seconds:.1f} s")
