"""Figures, one PNG each. ``Figure`` objects saved directly, no pyplot: importing
s7jax never switches the matplotlib backend of a notebook."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from s7jax.config import TARGET
from s7jax.runs import runfiles


def save(fig, path) -> Path:
    """The file written (``.png`` added as matplotlib would), whole or not at all."""
    path = Path(path)
    path = path if path.suffix else path.with_name(path.name.rstrip(".") + ".png")
    with runfiles.written_whole(path) as tmp:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=110, bbox_inches="tight")
    return path


def curves(history: Sequence[dict[str, Any]], path, title: str = "") -> Path:
    """Train vs test loss (left) and accuracy (right) per epoch."""
    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss (NLL)"), (ax_acc, "acc", "accuracy (%)")):
        ax.plot(epochs, [r[f"train_{key}"] for r in history], "o-", label="train")
        ax.plot(epochs, [r[f"test_{key}"] for r in history], "s-", label="test")
        ax.set(xlabel="epoch", ylabel=label)
        ax.grid(alpha=0.3)
        ax.legend()
    ax_acc.axhline(TARGET, color="grey", ls="--", lw=1)
    if title:
        fig.suptitle(title)
    return save(fig, path)


def accuracy_lines(runs: dict[Any, Sequence[dict[str, Any]]], path, ylim, title="") -> Path:
    """Test accuracy per epoch, one line per run, with the target's."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for label, history in runs.items():
        ax.plot([r["epoch"] for r in history], [r["test_acc"] for r in history], "o-", ms=3,
                label=label)
    ax.axhline(TARGET, color="black", ls="--", lw=1, label=f"{TARGET}%")
    ax.set(xlabel="epoch", ylabel="test accuracy (%)", ylim=ylim, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def digit_grid(images: np.ndarray, titles: Sequence[str], path, columns: int,
               suptitle: str = "") -> Path:
    """Images ``(N, 28, 28[, 1])`` in a grid, a title above each."""
    rows = max(1, -(-len(images) // columns))
    fig = Figure(figsize=(1.2 * columns, 1.35 * rows))
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, image, title in zip(axes.ravel(), images, titles):
        ax.imshow(np.squeeze(image), cmap="gray", vmin=0, vmax=1 if image.max() <= 1 else 255)
        ax.set_title(title, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    return save(fig, path)
