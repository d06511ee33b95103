"""The recipe trials under ``results/recipe-trials/<trial>/<model>/seed-<s>/``:
candidate recipes. Those trained before the max-pool gradient fix are each set
against the trial they build on; those trained after it, against today's
recipe (``results/<model>/``). The GPU screen under
``results/gpu-trials/<trial>/<model>/seed-<s>/`` sets each candidate against
its own baseline, trained the same way on the GPU."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from s7jax.runs import runfiles
from s7jax.runs.results import run_dir, runs_of
from tools.report.before_fix import before_fix

TRIALS = "recipe-trials"
BASELINE = "previous"  # the trial that holds the recipe the others were measured against
# How a run was computed, not what it trains: the same recipe up to rounding.
NOT_RECIPE = ("seed", "pipeline", "data_source")


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


def recipe(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` without :data:`NOT_RECIPE`."""
    return {k: v for k, v in settings.items() if k not in NOT_RECIPE}


def first_run(folder: str | Path, model: str, runs: dict[str, Any]) -> Path:
    """The run folder of the first seed of ``runs`` (``over_seeds``'s), under ``folder``."""
    return run_dir(folder, model, int(next(iter(runs["seeds"]))))


# A table's first row: what the others are set against.
UNPAIRED = {"changes": {}, "builds_on": None, "paired_difference": None, "paired_seeds": 0,
            "paired_se": None}


def _trials(results_dir: Path, model: str, before: bool) -> dict[str, dict[str, Any]]:
    """Each trial trained before the fix (``before``) or after it, that has runs:
    its runs and its first seed's settings."""
    root = Path(results_dir) / TRIALS
    found = {}
    for path in sorted(root.iterdir()) if root.is_dir() else ():
        runs = runs_of(path, model) if path.is_dir() else None
        if runs is not None and before_fix(Path(results_dir), path) == before:
            found[path.name] = {"name": path.name, "runs": runs,
                                "settings": settings(first_run(path, model, runs))}
    return found


def paired(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[int, float | None, float | None]:
    """On the seeds both sets of runs (``over_seeds``'s ``seeds``) ran: how
    many, and the mean and standard error of our last-3 means minus theirs.
    The error comes from the spread of the per-seed differences themselves
    (runs on one seed share their start, so they are not independent draws)."""
    diffs = [seed["mean"] - theirs[s]["mean"] for s, seed in ours.items() if s in theirs]
    return (len(diffs), statistics.fmean(diffs) if diffs else None,
            statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else None)


def _against(trial: dict[str, Any], other: dict[str, Any]) -> dict[str, Any]:
    n, difference, se = paired(trial["runs"]["seeds"], other["runs"]["seeds"])
    return {"builds_on": other["name"], "paired_seeds": n, "paired_difference": difference,
            "paired_se": se}


def _changes(settings: dict[str, Any], base: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    settings, base = recipe(settings), recipe(base)
    return {k: (base.get(k), v) for k, v in settings.items() if base.get(k) != v}


def recipe_trials(results_dir: str | Path, model: str = "model6") -> list[dict[str, Any]]:
    """Every trial trained before the fix, baseline first: its settings, its
    ``changes`` against the baseline, its runs
    (``s7jax.runs.results.over_seeds``), and the paired difference of its
    last-3 mean against the trial it builds on (the one whose changes it
    contains, with fewest others)."""
    found = _trials(Path(results_dir), model, before=True)
    if BASELINE not in found:
        return []
    base = found.pop(BASELINE)
    trials = [{**base, **UNPAIRED}]
    trials += [{**t, "changes": _changes(t["settings"], base["settings"])} for t in found.values()]
    for t in trials[1:]:
        below = [o for o in trials if len(o["changes"]) < len(t["changes"])
                 and o["changes"].items() <= t["changes"].items()]
        t.update(_against(t, max(below, key=lambda o: len(o["changes"]))))
    return trials


def after_fix(results_dir: str | Path, model: str = "model6") -> list[dict[str, Any]]:
    """Today's runs of ``model`` (``results/<model>/``, named ``default``)
    first, then every trial trained after the fix, each with its ``changes``
    against them and its paired difference on the same seeds."""
    results_dir = Path(results_dir)
    runs = runs_of(results_dir, model)
    trials = _trials(results_dir, model, before=False)
    if runs is None or not trials:
        return []
    default = {"name": "default", "runs": runs, **UNPAIRED,
               "settings": settings(first_run(results_dir, model, runs))}
    return [default, *({**t, "changes": _changes(t["settings"], default["settings"]),
                        **_against(t, default)} for t in trials.values())]


GPU_TRIALS = "gpu-trials"  # results/gpu-trials/<trial>/<model>/seed-<s>/: the GPU screen
GPU_BASELINE = "baseline"


def gpu_trials(results_dir: str | Path) -> list[dict[str, Any]]:
    """The GPU screen, its baseline first: each trial's runs (of whichever
    model it trained), its ``changes`` against the baseline's settings, its
    paired difference against the baseline on the same seeds, its first seed's
    folder (``first_run``), and the command that ran it (``commands.jsonl``, as
    it was run on the GPU)."""
    root = Path(results_dir) / GPU_TRIALS
    commands = {}
    if (root / "commands.jsonl").is_file():
        for line in (root / "commands.jsonl").read_text().splitlines():
            record = json.loads(line)
            commands[record["trial"]] = record["command"]
    found = {}
    for model_dir in sorted(p for p in root.glob("*/*") if p.is_dir()):
        trial, model = model_dir.parent, model_dir.name
        if (runs := runs_of(trial, model)) is not None:
            first = first_run(trial, model, runs)
            found[trial.name] = {"name": trial.name, "model": model, "runs": runs,
                                 "first_run": first, "settings": settings(first),
                                 "command": commands.get(trial.name)}
    if GPU_BASELINE not in found:
        return []
    base = found.pop(GPU_BASELINE)
    return [{**base, **UNPAIRED},
            *({**t, "changes": _changes(t["settings"], base["settings"]), **_against(t, base)}
              for t in found.values())]
