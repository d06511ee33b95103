"""The recipe trials under ``results/recipe-trials/<trial>/<model>/seed-<s>/``:
candidate recipes, each set against the trial it builds on."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from s7jax.runs import runfiles
from s7jax.runs.results import run_dir, runs_of

TRIALS = "recipe-trials"
BASELINE = "previous"  # the trial that holds the recipe the others were measured against


def flat(config) -> dict[str, Any]:
    """A Config's settings in one level (``augment.degrees``, ...), the cycle
    as the epochs it spans."""
    settings = {**config.to_json(), "cycle_epochs": config.cycle_span}
    augment = settings.pop("augment")
    return {**settings, **{f"augment.{k}": v for k, v in augment.items()}}


def settings(run: Path) -> dict[str, Any]:
    """A run's recorded config, :func:`flat`, with the settings added since it
    was recorded at the value it ran with."""
    return flat(runfiles.read_config(run))


def recipe_trials(results_dir: str | Path, model: str = "model6") -> list[dict[str, Any]]:
    """Every trial, baseline first: its settings, its ``changes`` against the
    baseline, its runs (``s7jax.runs.results.over_seeds``), and the paired mean
    and standard error of its last-3 mean against the trial it builds on (the
    one whose changes it contains, with fewest others)."""
    root = Path(results_dir) / TRIALS
    found = {p.name: runs_of(p, model) for p in sorted(root.iterdir()) if p.is_dir()} if (
        root.is_dir()) else {}
    if found.get(BASELINE) is None:
        return []
    base = found.pop(BASELINE)
    base_settings = settings(run_dir(root / BASELINE, model, int(next(iter(base["seeds"])))))
    trials = [{"name": BASELINE, "settings": base_settings, "changes": {}, "runs": base,
               "builds_on": None, "paired_difference": None, "paired_seeds": 0,
               "paired_se": None}]
    for name, runs in found.items():
        if runs is not None:
            trial_settings = settings(run_dir(root / name, model, int(next(iter(runs["seeds"])))))
            trials.append({"name": name, "runs": runs, "settings": trial_settings, "changes": {
                k: (base_settings.get(k), v) for k, v in trial_settings.items()
                if k != "seed" and base_settings.get(k) != v}})
    for t in trials[1:]:
        below = [o for o in trials if len(o["changes"]) < len(t["changes"])
                 and o["changes"].items() <= t["changes"].items()]
        parent = max(below, key=lambda o: len(o["changes"]))
        paired = [seed["mean"] - parent["runs"]["seeds"][s]["mean"]
                  for s, seed in t["runs"]["seeds"].items() if s in parent["runs"]["seeds"]]
        t.update(builds_on=parent["name"], paired_seeds=len(paired),
                 paired_difference=statistics.fmean(paired) if paired else None,
                 # The standard error of that mean, from the spread of the
                 # per-seed differences themselves (runs on one seed share
                 # their start, so they are not independent draws).
                 paired_se=(statistics.stdev(paired) / len(paired) ** 0.5
                            if len(paired) > 1 else None))
    return trials
