"""Performance, from the benchmark files ``results/*-<backend>.json``: the full
blocks of ``docs/performance.md``, the README's headline, and the refusal
times of ``docs/training.md``.

The tables themselves are :mod:`tools.bench.tables`' (the benchmarks
print them too); this adds, for each kind of file, the line above its table
that says what was measured, where and how, and the notes below it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tools.bench.tables import (GOALS, goal_ratios, parts_table, performance_markdown,
                                refusals_table, seeds_table, step_table)

BOUND = "no conv weight gradient"  # scripts/bench_step.py's lower bound, not a real step


def _source(name: str, result: dict[str, Any], *details: str) -> str:
    """The parenthesis after a block's title: the file, the command, the
    backend and what else the block names, then how it was measured (the
    last detail)."""
    *where, how = details
    return (f"({name}: `{result['command'].strip()}`, "
            + ", ".join([result["backend"], *where]) + f"; {how})")


def parts_block(name: str, result: dict[str, Any]) -> list[str]:
    cpu = (result.get("cpu") or {}).get("model_name") or result["device_kind"]
    return ["**Where the step's time goes** " + _source(
        name, result, cpu, "each part compiled and timed alone on the shapes the model gives "
        f"it, median of {result['repeats']} runs, FLOPs and bytes from XLA's cost analysis of "
        "each part's program"), "", parts_table(result)]


def step_block(name: str, result: dict[str, Any]) -> list[str]:
    v = result["variants"]
    same = [n for n in v if n != "s7jax" and v[n]["same_state_as_s7jax"]]
    notes = ["Above 1x, the variant is slower than s7jax's step. \"Same state\": its "
             f"parameters and BatchNorm statistics after {result['steps']} steps equal "
             "s7jax's exactly in this run" + (f" ({', '.join(same)})." if same else
                                              "; no variant here does.")]
    if BOUND in v:
        notes.append(f"With no weight gradient at all, the step takes "
                     f"{v[BOUND]['ratio_to_s7jax']:.2f}x s7jax's time: a bound on what a "
                     "faster weight gradient could save.")
    return ["**The train step's speed choices** " + _source(
        name, result, f"{result['cpu_count']} cores", f"median of {result['rounds']} rounds of "
        f"{result['steps']} steps, ratios within this run"), "", step_table(result), "",
        " ".join(notes)]


def startup_block(name: str, result: dict[str, Any]) -> list[str]:
    runs = "; ".join(f"{run}, {r['wall_s']:.1f} s in all (first epoch {r['first_epoch_s']:.1f} s)"
                     for run, r in result["runs"].items())
    return ["**The compilation cache** " + _source(
        name, result, f"`scripts/train.py {' '.join(result['run'])}`, each in a fresh process")
        + f": {runs}. A second identical run starts {result['saved_s']:.1f} s sooner with the "
        "cache than without it."]


def cores(machine: dict[str, Any]) -> str:
    """The cores the run could use: a process may be held to fewer than the host has."""
    usable = machine.get("usable_cpus") or machine.get("cpu_count")
    return (f"{usable} of {machine['cpu_count']} cores usable" if usable != machine.get("cpu_count")
            else f"{usable} cores")


def seeds_block(name: str, result: dict[str, Any]) -> list[str]:
    return ["**Seeds in one process** " + _source(
        name, result, f"model6's recipe for {result['epochs']} epochs on "
        f"{result['train_images']:,} images, batch {result['batch_size']}; each figure a whole "
        "`sweep.py --seeds N --strategy S` process, against `train.py --seed s` for seeds "
        "0 .. N-1, one process each, measured in the same run; the separate runs and "
        "sequential load their programs from a compile cache filled before the clock, vmap "
        "and map compile theirs inside it"), "",
        seeds_table(result), "",
        f"Below 1x, the seeds in one process cost less than separate runs; "
        f"`--together` takes **{result['default_strategy']}** on this backend."]


def step_shortfall(bench: dict[str, Any], step: dict[str, Any] | None,
                   parts: dict[str, Any] | None) -> str | None:
    """Where ``bench``'s train step misses its goal: how far, the fastest
    formulation ``step`` (``bench_step.py``) measured, and what bounds the
    step in ``parts`` (``bench_parts.py``). None where the goal is met."""
    ratio = (goal_ratios(bench) or {}).get("step")
    if ratio is None or ratio >= GOALS["step"] or not step or not parts:
        return None
    others = {n: v["ratio_to_s7jax"] for n, v in step["variants"].items()
              if n not in ("s7jax", BOUND)}
    fastest = min(others, key=others.get)
    conv = [p for p in parts["parts"] if p["part"].startswith("conv")]
    conv_ms = sum(p["ms"] for p in conv)
    conv_gflops = sum(p["flops"] for p in conv) / (conv_ms / 1e3) / 1e9
    text = (f"**The train step's goal is not met** in this bench run: {ratio:.3f}x the "
            f"original's, where {GOALS['step']:g}x needs a step "
            f"{100 * (GOALS['step'] / ratio - 1):.1f}% faster. ")
    text += (f"Of the {len(others)} other formulations in step-{step['backend']}.json, the "
             f"fastest, {fastest}, takes {others[fastest]:.2f}x s7jax's step time"
             + (", no real gain. " if others[fastest] > 0.98 else ". "))
    text += (f"What bounds it (parts-{parts['backend']}.json): the convolutions, forward and "
             f"both gradients, take {100 * conv_ms / parts['step']['ms']:.0f}% of the step at "
             f"{conv_gflops:.0f} GFLOP/s, {100 * conv_gflops / parts['limit']['gflops']:.0f}% of "
             "the machine's matrix-multiply peak")
    if BOUND in step["variants"]:
        text += (f"; without any weight gradient the step would take "
                 f"{step['variants'][BOUND]['ratio_to_s7jax']:.2f}x its time")
    return text + "."


def shortfall_blocks(files: dict[str, dict[str, Any]]) -> list[str]:
    """A paragraph per backend whose bench run misses the step's goal
    (``files``: the benchmark results by file stem, ``bench-cpu`` ...)."""
    blocks = []
    for stem in sorted(files):
        if stem.startswith("bench-"):
            backend = stem.removeprefix("bench-")
            text = step_shortfall(files[stem], files.get(f"step-{backend}"),
                                  files.get(f"parts-{backend}"))
            if text:
                blocks += ["", text, ""]
    return blocks


# Each kind of benchmark file, in the section's order, and its block.
BLOCKS: dict[str, Callable[[str, dict[str, Any]], list[str]]] = {
    "parts": parts_block, "step": step_block, "startup": startup_block}


def seeds_section(results_dir: Path) -> str:
    """docs/seeds.md's table: a block per ``seeds-<backend>.json``."""
    blocks = [seeds_block(p.name, json.loads(p.read_text()))
              for p in sorted(results_dir.glob("seeds-*.json"))]
    return "\n".join(sum(blocks, [])) if blocks else "Not measured yet: run `python scripts/bench_seeds.py`."


def performance_section(results_dir: Path) -> str:
    """The section's Markdown: ``scripts/bench.py``'s tables, then a block
    per file of each other benchmark."""
    paths = sorted(results_dir.glob("bench-*.json"))
    text = (performance_markdown(paths) if paths
            else "No benchmark results committed yet: run `python scripts/bench.py`.\n")
    files = {p.stem: json.loads(p.read_text()) for kind in ("bench", *BLOCKS)
             for p in sorted(results_dir.glob(f"{kind}-*.json"))}
    text += "\n".join(shortfall_blocks(files))
    for kind, block in BLOCKS.items():
        for stem in sorted(s for s in files if s.startswith(f"{kind}-")):
            text += "\n".join(["", *block(f"{stem}.json", files[stem]), ""])
    return text


def headline(results_dir: Path) -> str:
    """The README's short block: each backend's ratios over the PyTorch
    original, from ``results/bench-<backend>.json``."""
    lines = []
    for path in sorted(results_dir.glob("bench-*.json")):
        result = json.loads(path.read_text())
        ratios = goal_ratios(result)
        if result.get("quick") or ratios is None:
            continue
        m = result.get("machine", {})
        where = m.get("accelerator") or f"{m.get('cpu_model') or 'CPU'}, {cores(m)}"
        j, t = result["s7jax"], result["pytorch"]
        lines.append(
            f"- **{result['device'].upper()}** ({where}; `{path.relative_to(results_dir.parent)}`): "
            f"a training epoch {ratios['epoch']:.2f}x as fast as the PyTorch original, a train "
            f"step {ratios['step']:.2f}x, the test set's evaluation {ratios['eval']:.2f}x; peak "
            f"memory {j['default_path']['maxrss_kib'] / 1024:,.0f} MiB against "
            f"{t['maxrss_kib'] / 1024:,.0f} MiB.")
    if not lines:
        return "No benchmark results committed yet: run `python scripts/bench.py`."
    return "\n".join(lines)


def refusals_section(results_dir: Path) -> str:
    """``scripts/bench_refusals.py``'s table per backend file."""
    blocks = [f"({path.name}: `python scripts/bench_refusals.py`, the median of its runs of "
              "each fault)\n\n" + refusals_table(json.loads(path.read_text()))
              for path in sorted(results_dir.glob("refusals-*.json"))]
    return "\n\n".join(blocks) or "No refusal times committed yet: run `python scripts/bench_refusals.py`."
