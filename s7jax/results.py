"""Summaries of the committed runs under ``results/``.

``results/<model>/seed-<s>/`` holds one run's ``config.json`` and
``metrics.jsonl``; :func:`summarize` reads them all and computes, per seed,
the test accuracies of the last three epochs (the target: each >= 99.4%),
and per model the mean and standard deviation over seeds of the last-3 mean.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from s7jax import runfiles

LAST = 3
TARGET = 99.4


def seed_dirs(results_dir: Path, model: str) -> list[Path]:
    found = [p for p in (Path(results_dir) / model).glob("seed-*") if runfiles.read_metrics(p)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def summarize(results_dir: str | Path) -> dict[str, Any]:
    results_dir = Path(results_dir)
    models: dict[str, Any] = {}
    for model_dir in sorted(p for p in results_dir.iterdir() if p.is_dir()):
        seeds = {}
        for run in seed_dirs(results_dir, model_dir.name):
            history = runfiles.read_metrics(run)
            config = json.loads(runfiles.config_path(run).read_text())
            last = [r["test_acc"] for r in history[-LAST:]]
            seeds[run.name.split("-")[1]] = {
                "epochs": len(history),
                "last3": last,
                "min": min(last),
                "mean": statistics.fmean(last),
                "best": max(r["test_acc"] for r in history),
                "seconds_per_epoch": statistics.median(r["seconds"] for r in history),
                "device": config["environment"]["devices"][0],
                "backend": config["environment"]["backend"],
            }
        if not seeds:
            continue
        means = [s["mean"] for s in seeds.values()]
        models[model_dir.name] = {
            "seeds": seeds,
            "n_seeds": len(seeds),
            "mean": statistics.fmean(means),
            "std": statistics.stdev(means) if len(means) > 1 else 0.0,
            "min": min(s["min"] for s in seeds.values()),
            "seeds_holding_target": sum(s["min"] >= TARGET for s in seeds.values()),
        }
    return {"target": TARGET, "last_epochs": LAST, "models": models}


def write_summary(results_dir: str | Path) -> dict[str, Any]:
    summary = summarize(results_dir)
    path = Path(results_dir) / "summary.json"
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
