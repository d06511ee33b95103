""""Against the original": each model beside the study's report and the
PyTorch referee (``docs/results.md``), and the README's short version.

Reads the runs under ``results/<model>/``: the referee's (``torch-seed-*``),
s7jax's with the study's recipe (``original-seed-*``, or ``seed-*`` where the
default recipe is the study's) and s7jax's default (``seed-*``).
"""

from __future__ import annotations

from pathlib import Path

from s7jax.config import MAX_EPOCHS
from tools.report.before_fix import footnote, mark, seed_runs
from tools.report.study import plural


# The study's own results table: best test accuracy over 20 epochs of
# constant SGD 0.01 (the original notebooks' figures, for comparison; no run
# of this project produced them).
ORIGINAL_BEST = {"model1": 99.32, "model2": 99.34, "model3": 99.40, "model4": 99.43,
                 "model5": 99.46, "model6": 99.40}
ORIGINAL_EPOCHS = 20
RECIPE_KEYS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
               "cycle_epochs", "augment", "clean_epochs", "precise_bn", "batch_size")


def original_recipe_runs(results_dir: Path, model: str) -> tuple[dict | None, str]:
    """s7jax's runs of ``model`` with the study's recipe, and their kind: its
    ``original-seed-*`` runs, or, where the model's default recipe is the
    original one (models 1 and 2), its ``seed-*`` runs."""
    import dataclasses

    from s7jax.runs import results
    from s7jax.config import default_config

    runs = results.runs_of(results_dir, model, "original")
    if runs is not None:
        return runs, "original"
    ours, original = (dataclasses.asdict(default_config(model, r)) for r in ("default", "original"))
    if all(ours[k] == original[k] for k in RECIPE_KEYS):
        return results.runs_of(results_dir, model, "default"), "default"
    return None, "original"


def _cell(runs: dict | None, marked: str = "") -> str:
    if runs is None:
        return "-"
    n, epochs = runs["n_seeds"], {s["epochs"] for s in runs["seeds"].values()}
    spread = f" +/- {runs['std']:.2f}" if n > 1 else ""
    return (f"{runs['mean']:.2f}{spread} / {runs['best']:.2f} "
            f"({plural(n, 'seed')}, {'/'.join(map(str, sorted(epochs)))} ep.){marked}")


def runs_table(results_dir: Path) -> dict:
    """Each model's runs by kind, ``{model: {"referee", "original",
    "default"}}``, with their marks under ``"marks"``."""
    from s7jax.runs import results
    from s7jax.models import STUDY

    table = {}
    for m in STUDY:
        original, original_kind = original_recipe_runs(results_dir, m)
        row = {"referee": results.runs_of(results_dir, m, "referee"), "original": original,
               "default": results.runs_of(results_dir, m, "default")}
        kinds = {"referee": "referee", "original": original_kind, "default": "default"}
        row["marks"] = {k: mark(results_dir, seed_runs(results_dir, m, runs, kinds[k]))
                        for k, runs in row.items() if runs is not None}
        table[m] = row
    return table


def headline_against_original(results_dir: Path) -> list[str]:
    """The README's table: each model's s7jax runs beside the study's report."""
    lines = ["| model | the study reported (best of 20 ep.) | s7jax, default recipe: last-3 mean "
             "/ best | s7jax, the study's recipe |", "|---|---:|---:|---:|"]
    for m, row in runs_table(results_dir).items():
        marks = row["marks"]
        lines.append(f"| {m} | {ORIGINAL_BEST[m]:.2f} | "
                     f"{_cell(row['default'], marks.get('default', ''))} | "
                     f"{_cell(row['original'], marks.get('original', ''))} |")
    from s7jax.runs import results

    beyond = results.runs_of(results_dir, "model7", "default")
    if beyond is not None:  # not in the study: no figure to set it against
        marked = mark(results_dir, seed_runs(results_dir, "model7", beyond))
        lines.append(f"| model7 | - | {_cell(beyond, marked)} | - |")
    return footnote(lines)


def against_original(results_dir: Path) -> tuple[str, dict]:
    """The table of each model against the original study, and the runs it
    was made from (:func:`runs_table`)."""
    table = runs_table(results_dir)
    lines = [
        "Each cell: the last-3-epoch mean test accuracy (mean +/- std over seeds) / the best "
        "single epoch, then how many seeds and epochs. The original's column is the best test "
        f"accuracy the study reported over {ORIGINAL_EPOCHS} epochs, one run each; every other "
        "column is this project's runs under `results/<model>/`: `torch-seed-*` (the PyTorch "
        "referee, `python scripts/referee.py --model NAME --seed S`), `original-seed-*` "
        "(s7jax with the study's recipe, `python scripts/sweep.py --model NAME --recipe original "
        "--seeds N`; for models 1 and 2 s7jax's default recipe is the study's, so their "
        "`seed-*` runs serve) and `seed-*` (s7jax's default recipe).", "",
        "| model | original, reported (best of 20 ep.) | PyTorch referee, original recipe | "
        "s7jax, original recipe | s7jax, default recipe |",
        "|---|---:|---:|---:|---:|"]
    rows = []
    for m, row in table.items():
        marks = row["marks"]
        rows.append(f"| {m} | {ORIGINAL_BEST[m]:.2f} | "
                    + " | ".join(_cell(row[k], marks.get(k, ""))
                                 for k in ("referee", "original", "default")) + " |")
    lines += footnote(rows)
    lines += ["", *referee_verdicts(table)]
    longer = longer_referee(results_dir)
    if longer:
        lines += ["", longer]
    return "\n".join(lines), table


def _epochs(runs: dict) -> set[int]:
    return {s["epochs"] for s in runs["seeds"].values()}


def referee_verdicts(table: dict) -> list[str]:
    """Per model with both, s7jax (original recipe) against the PyTorch
    referee, by last-3 means, set against the seed-to-seed spread; then each
    side's best epoch against the study's report."""
    spreads = [r["std"] for row in table.values() for kind in ("referee", "original")
               if (r := row[kind]) is not None and r["n_seeds"] > 1]
    if not spreads:
        return []
    widest = max(spreads)
    lines = ["**s7jax against the referee**, the same recipe on the same data (last-3 means; "
             f"the seed-to-seed standard deviation measured here reaches {widest:.2f} points, "
             "and the gap is called beyond the spread when it exceeds twice that):", ""]
    beyond, compared = [], []
    for m, row in table.items():
        ours, ref = row["original"], row["referee"]
        if ours is None or ref is None or _epochs(ours) != _epochs(ref):
            continue
        compared.append(m)
        gap = round(ours["mean"] - ref["mean"], 2) + 0.0  # no "-0.00"
        verdict = "beyond the spread" if abs(gap) > 2 * widest else "within the spread"
        if abs(gap) > 2 * widest:
            beyond.append(m)
        lines.append(f"- {m}: s7jax {ours['mean']:.2f}{row['marks']['original']} "
                     f"({plural(ours['n_seeds'], 'seed')}) vs "
                     f"PyTorch {ref['mean']:.2f} ({plural(ref['n_seeds'], 'seed')}): "
                     f"{gap:+.2f} points, {verdict}.")
    lines += ["", "**Both against the study's report** (best single epoch of any seed here, "
              f"within {MAX_EPOCHS} epochs, against the best of {ORIGINAL_EPOCHS} reported):", ""]
    for m in compared:
        ours, ref = table[m]["original"], table[m]["referee"]
        lines.append(f"- {m}: reported {ORIGINAL_BEST[m]:.2f}; PyTorch {ref['best']:.2f} "
                     f"({ref['best'] - ORIGINAL_BEST[m]:+.2f}), s7jax {ours['best']:.2f}"
                     f"{table[m]['marks']['original']} "
                     f"({ours['best'] - ORIGINAL_BEST[m]:+.2f}).")
    agree = [m for m in compared if m not in beyond]
    lines += ["", (f"Where s7jax and the referee agree ({', '.join(agree)}), the distance to "
                   "the study's report is not the port's: PyTorch's build of the same layers, "
                   "with PyTorch's own initialisation and data loading, trained with the same "
                   "recipe on the same images, lands where s7jax does. ") if agree else ""]
    if beyond:
        lines[-1] += f"Beyond the spread, and so still to explain: {', '.join(beyond)}."
    lines[-1] = lines[-1].strip()
    return footnote(lines)


def longer_referee(results_dir: Path) -> str:
    """The referee trained for the study's own 20 epochs, where such a run is
    committed (``results/<model>/torch-20-epochs-seed-<s>/``)."""
    from s7jax.runs import runfiles

    parts = []
    for run in sorted(results_dir.glob("model*/torch-20-epochs-seed-*")):
        rows = runfiles.read_metrics(run)
        if not rows:
            continue
        best = max(rows, key=lambda r: r["test_acc"])
        first15 = max(r["test_acc"] for r in rows[:MAX_EPOCHS])
        parts.append(
            f"`{run.relative_to(results_dir.parent)}` (`python scripts/referee.py --model "
            f"{run.parent.name} --seed {run.name.rsplit('-', 1)[1]} --epochs {len(rows)} "
            f"--allow-long --workdir {run.relative_to(results_dir.parent)}`): best "
            f"{best['test_acc']:.2f} in epoch {best['epoch']} of {len(rows)}, against "
            f"{first15:.2f} within the first {MAX_EPOCHS}; its last three epochs "
            + " / ".join(f"{r['test_acc']:.2f}" for r in rows[-3:]) + ".")
    if not parts:
        return ""
    return ("**The study's 20 epochs.** The referee trained for as long as the study trained: "
            + " ".join(parts))
