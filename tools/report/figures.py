"""The report's figures beyond a run's own (``s7jax.runs.plots``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from matplotlib.figure import Figure

from s7jax.config import TARGET
from s7jax.runs.plots import accuracy_lines, save


def last_epochs(last3: dict[int, Sequence[float]], path, mean: float, ci95: float | None,
                title: str = "") -> Path:
    """Each seed's last test accuracies against the target, with the mean and its
    95% interval."""
    fig = Figure(figsize=(max(6, 0.35 * len(last3) + 2), 4))
    ax = fig.subplots()
    seeds = sorted(last3)
    for seed in seeds:
        accs = last3[seed]
        held = min(accs) >= TARGET
        ax.plot([seed] * len(accs), accs, "o", ms=4, color="tab:blue" if held else "tab:red")
    ax.axhline(TARGET, color="black", ls="--", lw=1, label=f"{TARGET}%")
    ax.axhline(mean, color="tab:green", lw=1, label=f"mean of the seeds' means {mean:.3f}%")
    if ci95:
        ax.axhspan(mean - ci95, mean + ci95, color="tab:green", alpha=0.15, label="its 95% interval")
    ax.set_xticks(seeds)
    ax.set_xlabel("seed (red: misses the target in an epoch)")
    ax.set_ylabel("test accuracy (%), last epochs")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return save(fig, path)


def models(runs: dict[str, Sequence[dict[str, Any]]], path) -> Path:
    """Test accuracy per epoch of several models on one axis."""
    return accuracy_lines(runs, path, (98.0, 99.8), "test accuracy per epoch")
