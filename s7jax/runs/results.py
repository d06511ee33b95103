"""Summaries of the committed runs under ``results/<model>/seed-<s>/``: per
seed the last three epochs' test accuracies (the target: each >= 99.4%), per
model the mean, deviation and 95% interval over seeds, and the worst seed."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from s7jax.runs import runfiles
from s7jax.config import TARGET

LAST = 3

# Student's t, the 0.975 quantile, by degrees of freedom (1..30): the 95%
# interval of a mean over a few seeds. Beyond 30 the normal's 1.96 is close.
T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
        2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
        2.060, 2.056, 2.052, 2.048, 2.045, 2.042)

# A run's folder under results/<model>/ names how it was trained: s7jax's
# default recipe, the study's original recipe, or the PyTorch referee.
RUN_PREFIXES = {"default": "seed", "original": "original-seed", "referee": "torch-seed"}


def run_dir(results_dir: str | Path, model: str, seed: int, kind: str = "default") -> Path:
    return Path(results_dir) / model / f"{RUN_PREFIXES[kind]}-{seed}"


def run_summary(run: Path) -> dict[str, Any]:
    history = runfiles.read_metrics(run)
    config = runfiles.read_record(run)
    last = [r["test_acc"] for r in history[-LAST:]]
    return {"epochs": len(history), "last3": last, "min": min(last), "mean": statistics.fmean(last),
            "best": max(r["test_acc"] for r in history),
            "seconds_per_epoch": statistics.median(r["seconds"] for r in history),
            "device": config["environment"]["devices"][0],
            "backend": config["environment"]["backend"]}


def over_seeds(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Mean +/- std over seeds of the runs' last-3 means, and the min."""
    means = [s["mean"] for s in runs.values()]
    std = statistics.stdev(means) if len(means) > 1 else 0.0
    n = len(means)
    t = T975[n - 2] if 2 <= n <= len(T975) + 1 else 1.96
    worst = min(runs, key=lambda seed: (runs[seed]["min"], runs[seed]["mean"]))
    return {"seeds": runs, "n_seeds": n, "mean": statistics.fmean(means), "std": std,
            # 95% interval of the mean of the seeds' last-3 means (Student's t).
            "ci95": t * std / n ** 0.5 if n > 1 else None,
            "min": min(s["min"] for s in runs.values()),
            "best": max(s["best"] for s in runs.values()), "worst_seed": worst,
            "seeds_holding_target": sum(s["min"] >= TARGET for s in runs.values())}


def runs_of(results_dir: str | Path, model: str, kind: str = "default") -> dict[str, Any] | None:
    """:func:`over_seeds` of ``model``'s runs of ``kind`` (None: no run)."""
    prefix = RUN_PREFIXES[kind] + "-"
    found = [p for p in (Path(results_dir) / model).glob(prefix + "*")
             if p.name[len(prefix):].isdigit() and runfiles.read_metrics(p)]
    if not found:
        return None
    found.sort(key=lambda p: int(p.name[len(prefix):]))
    return over_seeds({p.name[len(prefix):]: run_summary(p) for p in found})


def all_models(results_dir: str | Path) -> dict[str, Any]:
    results_dir = Path(results_dir)
    models = {p.name: runs for p in sorted(results_dir.iterdir())
              if p.is_dir() and (runs := runs_of(results_dir, p.name)) is not None}
    return {"target": TARGET, "last_epochs": LAST, "models": models}


def write_summary(results_dir: str | Path) -> dict[str, Any]:
    summary = all_models(results_dir)
    path = Path(results_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
