"""Each model's step of the study, in words: its target, results and analysis.

The ``## model1`` .. ``## model6`` sections of ``docs/results.md``. The targets and next
steps are the study's plan, in words (:data:`STEPS`); every figure in the
Results and Analysis is read from the run files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s7jax.config import MAX_EPOCHS, TARGET
from tools.report.before_fix import MARK, mark, seed_runs


# What each step of the study tried, and what the next one changes (the
# original notebooks' Target and the plan of the next step, in words; every
# figure in the Results and Analysis is read from the run files).
STEPS = {
    "model1": ("A heavy baseline: seven plain convolutions and two pools, 6.4M parameters, "
               "to see what the layout reaches with capacity to spare.",
               "The next step keeps the layout and cuts the channels to a few dozen."),
    "model2": ("The same layout with 8-28 channels (21,798 parameters), no normalisation.",
               "The next step adds batch normalisation after convs 1-5."),
    "model3": ("Batch normalisation after each of convs 1-5 (17,354 parameters).",
               "The next step adds dropout after each pool, against the train/test gap."),
    "model4": ("drop(0.3) after each pool, channels trimmed (14,450 parameters).",
               "The next step spreads a lighter drop(0.2) over every BN convolution and adds "
               "augmentation."),
    "model5": ("drop(0.2) after every BN convolution, rotation and mild brightness/contrast "
               "augmentation (12,122 parameters).",
               "The next step squeezes under 8,000 parameters: bias-free convolutions before "
               "BN, drop(0.1), no activation after conv 6, and the recipe that holds 99.4%."),
    "model6": ("Under 8,000 parameters (7,664): bias-free convs 1-5, drop(0.1), "
               "rotation +/-7 deg and brightness/contrast x[0.8, 1.2]; hold 99.4% in each of "
               "the last three epochs on every seed.",
               ""),
}

# A train/test gap (points) below this is called small: a few times the
# ~0.08-point standard error of one test accuracy near 99.4% on 10,000 images.
OVERFIT_GAP = 0.25


def recipe(config: dict) -> str:
    c = config["config"]
    parts = [f"{c['optimizer'].upper()}"
             + (f" (Nesterov, momentum {c['momentum']})" if c["nesterov"]
                else f" (momentum {c['momentum']})" if c["optimizer"] == "sgd" else ""),
             f"{c['schedule']} lr {c['lr']:g}" + _cycle(c), f"batch {c['batch_size']}"]
    if c["weight_decay"]:
        parts.append(f"weight decay {c['weight_decay']:g}"
                     + (" on the conv kernels only" if c.get("decay_scope") == "kernels" else ""))
    a = c["augment"]
    if a["degrees"] or a["brightness"] or a["contrast"]:
        parts.append(f"augmentation +/-{a['degrees']:g} deg, x[{1 - a['brightness']:g}, "
                     f"{1 + a['brightness']:g}] brightness/contrast")
    else:
        parts.append("no augmentation")
    if c["clean_epochs"]:
        parts.append(f"last {c['clean_epochs']} epochs un-augmented")
    if c["precise_bn"]:
        parts.append(f"BN statistics re-estimated on {c['precise_bn']:,} clean training images")
    return ", ".join(parts)


def _cycle(c: dict) -> str:
    """A one-cycle that ends before the run does, and the rate after it."""
    cycle = c.get("cycle_epochs")  # a run recorded before the setting: the whole run
    if c["schedule"] != "onecycle" or not cycle or cycle >= c["epochs"]:
        return ""
    after = (f"epoch {c['epochs']}" if cycle + 1 == c["epochs"]
             else f"epochs {cycle + 1}-{c['epochs']}")
    return (f" over {cycle} epochs, then its final rate {c['lr'] * c['final_lr_fraction']:g} "
            f"in {after}")


def model_sections(models: dict[str, Any], first_runs: dict[str, tuple], table: dict,
                   results_dir: Path) -> list[str]:
    """The lines of every model's section, in the study's order: target,
    results (the first seed's run), analysis against the step before and
    with the study's recipe (``table``, as
    :func:`tools.report.original.against_original` returns it)."""
    lines: list[str] = []
    previous = None
    for name, (target, next_step) in STEPS.items():
        if name not in models:
            continue
        m = models[name]
        run, config, history = first_runs[name]
        epochs = config["config"]["epochs"]
        command = f"python scripts/sweep.py --model {name} --seeds {m['n_seeds']}"
        if epochs != MAX_EPOCHS:
            command += f" --epochs {epochs}"
        lines += ["", f"## {name}", "", f"**Target.** {target}", "",
                  f"**Results.** Recipe: {recipe(config)}. {results_sentence(history, m, run, command)}"]
        if epochs != MAX_EPOCHS:
            lines[-1] += (f" Trained for {plural(epochs, 'epoch')} of the study's {MAX_EPOCHS} only, "
                          f"for want of time: an epoch took "
                          f"{m['seeds'][run.name.split('-')[1]]['seconds_per_epoch']:.0f} s on "
                          f"{device(config['environment'])}, so these are early-training "
                          f"figures, not comparable with the {MAX_EPOCHS}-epoch runs.")
        if mark(results_dir, seed_runs(results_dir, name, m)):
            lines[-1] += f" ({MARK} Trained before the max-pool gradient fix, CHANGELOG.md.)"
        same_recipe = step_sentence(name, table, previous[0] if previous else None)
        lines += ["", f"**Analysis.** {analysis(name, history, m, previous, regularisers(config))} "
                      f"{same_recipe} {next_step}".rstrip().replace("  ", " ")]
        previous = (name, history, m)
    return lines


def step_sentence(name: str, table: dict, previous: str | None) -> str:
    """What this step of the study buys under one fixed recipe (the
    original), by the referee and s7jax runs; empty where neither exists."""
    def epochs(runs):
        return {s["epochs"] for s in runs["seeds"].values()}

    row = table.get(name, {})
    kinds = [(kind, who) for kind, who in (("original", "s7jax"),
                                           ("referee", "the PyTorch referee")) if row.get(kind)]
    # Runs of different lengths are not one comparison: each says its length.
    lengths = {kind: epochs(row[kind]) for kind, _ in kinds}
    differ = len({frozenset(e) for e in lengths.values()}) > 1
    parts = []
    for kind, who in kinds:
        now = row[kind]
        before = table.get(previous, {}).get(kind) if previous else None
        text = f"{who} {now['mean']:.2f}%"
        if differ:
            text += f" after {'/'.join(map(str, sorted(lengths[kind])))} epochs"
        if before is not None and epochs(now) == epochs(before):
            text += f" ({now['mean'] - before['mean']:+.2f} against {previous})"
        parts.append(text)
    if not parts:
        return ""
    return ("With the study's recipe (last-3 mean of this project's runs, table above): "
            + ", ".join(parts) + ".")


def regularisers(config: dict) -> dict[str, bool]:
    """Which regularisers shaped the last epoch's training batches (its train accuracy)."""
    from s7jax.models import get_model

    c = config["config"]
    a = c["augment"]
    # The last epoch's batches, the ones its train accuracy is of: un-augmented in a clean tail.
    return {"dropout": bool(getattr(get_model(c["model"]), "dropout_rate", 0.0)),
            "augmentation": bool(a["degrees"] or a["brightness"] or a["contrast"])
            and c["clean_epochs"] == 0}


def device(env: dict) -> str:
    """The run's backend, with the core count where that is what bounds it."""
    if env["backend"] == "cpu":
        cores = (env.get("cpu") or {}).get("cores_usable", env["cpu_count"])
        return f"cpu ({cores} core{'s' if cores != 1 else ''})"
    return f"{env['backend']} x{env['device_count']}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def first_epoch_at(history: list[dict], accuracy: float) -> int | None:
    return next((r["epoch"] for r in history if r["test_acc"] >= accuracy), None)


def results_sentence(history: list[dict], m: dict, run: Path, command: str) -> str:
    last = history[-1]
    several = m["n_seeds"] > 1
    seeds = f" (seed {run.name.split('-')[1]})" if several else ""
    # This run's own last three epochs, then the mean over the model's seeds (the
    # figure the Analysis compares).
    last3 = ""
    if len(history) >= 3:
        last3 = f", last-3 mean {sum(r['test_acc'] for r in history[-3:]) / 3:.2f}%" + (
            f" ({m['mean']:.2f}% over its {m['n_seeds']} seeds)" if several else "")
    return (f"Over {plural(len(history), 'epoch')} (`{command}`): best test accuracy "
            f"{max(r['test_acc'] for r in history):.2f}%{seeds}, last epoch "
            f"{last['test_acc']:.2f}% test vs {last['train_acc']:.2f}% train{last3}.")


def analysis(name: str, history: list[dict], m: dict, previous, regularisers: dict) -> str:
    """What the numbers of this step say, next to the step before."""
    last = history[-1]
    gap = last["train_acc"] - last["test_acc"]
    tail = [r["test_acc"] for r in history[-5:]]
    parts = [f"Epoch 1 reached {history[0]['test_acc']:.2f}% test accuracy."]
    reach = [(a, first_epoch_at(history, a)) for a in (99.0, TARGET)]
    parts.append(" ".join(f"{a:.1f}% first in epoch {e}." if e
                          else f"{a:.1f}% not reached in {plural(len(history), 'epoch')}."
                          for a, e in reach))
    if len(tail) > 1:
        parts.append(f"Over the last {len(tail)} epochs test accuracy stayed within "
                     f"{min(tail):.2f}-{max(tail):.2f}%.")
    if gap >= OVERFIT_GAP:
        parts.append(f"Train accuracy ends {gap:.2f} points above test accuracy: the model fits "
                     "its training set better than it generalises.")
    elif gap > 0:
        parts.append(f"Train accuracy ends only {gap:.2f} points above test accuracy: little "
                     "overfitting.")
    else:
        harder = " and ".join(x for x, on in (("dropout", regularisers["dropout"]),
                                             ("augmentation", regularisers["augmentation"])) if on)
        parts.append(f"Train accuracy (measured with {harder or 'no regularisation'} on) ends "
                     f"{-gap:.2f} points below test accuracy: there is no overfitting left to "
                     "fight.")
    if previous is not None:
        prev_name, prev_history, prev_m = previous
        if len(prev_history) == len(history):
            parts.append(f"Against {prev_name}: last-3 mean {m['mean'] - prev_m['mean']:+.2f} points.")
        else:  # runs of different lengths: compare where both have a figure
            e = min(len(prev_history), len(history))
            parts.append(f"Against {prev_name} at epoch {e} (the shorter run's last): "
                         f"{history[e - 1]['test_acc']:.2f}% vs {prev_history[e - 1]['test_acc']:.2f}%.")
    if name == "model6":
        parts.append(f"{m['seeds_holding_target']} of {m['n_seeds']} seeds hold >= {TARGET}% in each "
                     f"of the last three epochs (lowest {m['min']:.2f}%).")
    return " ".join(parts)
