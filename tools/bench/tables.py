"""The benchmarks' results as tables: the text each benchmark prints, the docs' Markdown.

``scripts/bench.py`` writes ``results/bench-<cpu|gpu>.json``; :func:`rows`
turns one such result into table rows, :func:`text_table` prints them
aligned (the bench's own output) and :func:`performance_markdown` makes the
Markdown of ``docs/performance.md`` from several files::

    from tools.bench.tables import performance_markdown
    print(performance_markdown(sorted(Path("results").glob("bench-*.json"))))

:func:`parts_table`, :func:`step_table` and :func:`seeds_table` do the same
for ``scripts/bench_parts.py``, ``bench_step.py`` and ``bench_seeds.py``.
The speed-up column is s7jax's rate over PyTorch's (images per second, or
PyTorch's seconds over s7jax's): above 1, s7jax is faster.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Iterable
from typing import Any

Row = tuple[str, str, str, str]  # quantity, s7jax, PyTorch, speed-up
HEADER: Row = ("model6, batch 128", "s7jax", "PyTorch", "speed-up")


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _ratio(num: float | None, den: float | None) -> str:
    if not num or not den:
        return ""
    return f"{num / den:.2f}x"


def _mib(kib: float | None) -> str:
    return "-" if kib is None else f"{kib / 1024:,.0f} MiB"


def rows(result: dict[str, Any]) -> list[Row]:
    """The table of one bench result (a dict as ``scripts/bench.py`` writes it)."""
    j = result.get("s7jax") or {}
    t = result.get("pytorch") or {}
    out: list[Row] = []

    def rate(label: str, jv, tv):
        out.append((label, _num(jv, ",.0f"), _num(tv, ",.0f"), _ratio(jv, tv)))

    def seconds(label: str, jv, tv, ratio: bool = True):
        out.append((label, _num(jv, ".2f"), _num(tv, ".2f"), _ratio(tv, jv) if ratio else ""))

    seconds("compile train step / first step (s)", j.get("compile_train_step_s"),
            t.get("first_step_s"), ratio=False)
    rate("train step, fixed batch (img/s)", j.get("step_images_per_s"), t.get("step_images_per_s"))
    names = {"channels_last": "channels-last", "compile": "torch.compile",
             "compile_channels_last": "torch.compile, channels-last"}
    for key, r in (t.get("step_tuned") or {}).items():
        if "images_per_s" in r:
            rate(f"train step, fixed batch, PyTorch {names.get(key, key)} (img/s)",
                 j.get("step_images_per_s"), r["images_per_s"])
    # The CPU default since the on-device pipeline's speed-up ("device");
    # older files measured "tfds" as the default.
    default = "device" if j.get("default_path") else "tfds"
    pipelines = [("tfds", "tf.data pipeline"), ("device", "on-device pipeline")]
    epochs = [("device", "on-device pipeline"),
              ("scan", "on-device, one call per epoch"),
              ("tfds", "tf.data pipeline"),
              ("tfds_grouped", f"tf.data pipeline, {j.get('steps_per_call')} steps per call")]
    epochs = [(k, label + (" (default)" if k == default else "")) for k, label in epochs]
    for key, label in epochs:
        e = j.get(f"epoch_{key}")
        if not e:  # not measured in this run (older files, or no TensorFlow)
            continue
        tt = t.get("epoch") or {}
        rate(f"training epoch, {label} (img/s)", e.get("images_per_s"), tt.get("images_per_s"))
        seconds(f"training epoch, {label} (s)", e.get("seconds"), tt.get("seconds"))
    for key, label in pipelines:
        if j.get(f"epoch_{key}"):
            seconds(f"set-up to first batch, {label} (s)", j[f"epoch_{key}"].get("setup_s"), None,
                    ratio=False)
    if j.get("compile_epoch_scan_s"):
        seconds("compile one-call epoch (s)", j["compile_epoch_scan_s"], None, ratio=False)
    if j.get("precise_bn"):
        seconds(f"BN re-estimation, {j['precise_bn']['images']:,} images (s)",
                j["precise_bn"]["seconds"], None, ratio=False)
    seconds("evaluation of the test set (s)", (j.get("eval") or {}).get("seconds"),
            (t.get("eval") or {}).get("seconds"))
    if j.get("eval_one_call"):
        seconds("evaluation of the test set, one call (s)", j["eval_one_call"]["seconds"],
                (t.get("eval") or {}).get("seconds"))
    if j.get("default_path"):
        out.append(("peak memory, main process, default run (on-device pipeline)",
                    _mib(j["default_path"]["maxrss_kib"]), _mib(t.get("maxrss_kib")), ""))
        out.append(("peak memory, main process, after the tf.data epochs (TensorFlow loaded)",
                    _mib(j.get("maxrss_kib")), "-", ""))
    else:
        out.append(("peak memory, main process", _mib(j.get("maxrss_kib")),
                    _mib(t.get("maxrss_kib")), ""))
    if t.get("maxrss_children_kib"):
        out.append(("peak memory, largest loader worker", "-", _mib(t.get("maxrss_children_kib")), ""))
    if j.get("device_peak_bytes") or t.get("device_peak_bytes"):
        out.append(("peak accelerator memory",
                    _mib(j["device_peak_bytes"] / 1024 if j.get("device_peak_bytes") else None),
                    _mib(t["device_peak_bytes"] / 1024 if t.get("device_peak_bytes") else None), ""))
    return out


def _notes(result: dict[str, Any], dated: bool = True) -> list[str]:
    """What was measured where: the goals, the machine, versions, settings,
    memory by stage. ``dated``: with the run's date (the docs leave it to the
    file and its history)."""
    m = result.get("machine", {})
    v = result.get("versions", {})
    s = result.get("settings", {})
    device = m.get("accelerator") or m.get("cpu_model") or "CPU"
    lines = [goals(result)] if goals(result) else []
    lines += [
        f"{result.get('device', '?').upper()}: {device}, {m.get('usable_cpus') or '?'} of {m.get('cpu_count', '?')} CPU cores usable; "
        f"JAX {v.get('jax', '?')}, "
        f"PyTorch {(v.get('torch') or 'not installed') if result.get('pytorch') else 'not run'}; "
        + (f"{result.get('date', '?')[:10]}; " if dated else "")
        + f"`{result.get('command', '')}`",
    ]
    if s:
        lines.append(
            f"{s.get('train_images', '?'):,} training and {s.get('test_images', '?'):,} test images; "
            f"step rate over {s.get('steps', '?')} steps; PyTorch: DataLoader with "
            f"{s.get('torch_workers', '?')} workers, eval batch {s.get('torch_eval_batch_size', '?')}; "
            f"s7jax eval batch {s.get('eval_batch_size', '?')}, test set kept on the device.")
    stages = (result.get("s7jax") or {}).get("memory_stages")
    if stages:
        lines.append("s7jax's peak memory after each stage: " + "; ".join(
            f"{name} {_mib(kib)}" for name, kib in stages.items())
            + (f"; the tf.data epochs (TensorFlow) {_mib(result['s7jax']['maxrss_kib'])}"
               if result["s7jax"].get("epoch_tfds") else "") + ".")
    if result.get("pytorch_skipped"):
        lines.append(f"PyTorch side skipped: {result['pytorch_skipped']}.")
    if (result.get("s7jax") or {}).get("tfds_skipped"):
        lines.append(f"tf.data rows skipped: {result['s7jax']['tfds_skipped']}.")
    load = m.get("loadavg_before")
    if load and load[0] > 0.5:
        lines.append(f"Load average before the run: {load[0]:.2f} (other work on the machine).")
    if result.get("quick"):
        lines.append("QUICK run (--quick): tiny counts, not a measurement.")
    return lines


GOALS = {"epoch": 2.0, "step": 1.5, "eval": 2.0}  # s7jax over the PyTorch original


def goal_ratios(result: dict[str, Any]) -> dict[str, float] | None:
    """s7jax's default path over the PyTorch original, by the goals' names;
    None for a file without both sides."""
    j, t = result.get("s7jax") or {}, result.get("pytorch") or {}
    if not j.get("default_path") or not t.get("epoch"):
        return None
    return {
        # Per image, as against_pytorch.ratios: the two epochs differ by a short last batch.
        "epoch": j["epoch_device"]["images_per_s"] / t["epoch"]["images_per_s"],
        "step": j["step_images_per_s"] / t["step_images_per_s"],
        "eval": t["eval"]["seconds"] / j["eval"]["seconds"],
    }


def goals(result: dict[str, Any]) -> str | None:
    """One sentence: s7jax's default path against the PyTorch original, goal
    by goal (issue 21's), and against PyTorch at its best on the step."""
    measured = goal_ratios(result)
    if measured is None:
        return None
    j, t = result["s7jax"], result["pytorch"]
    names = {"epoch": "training epoch", "step": "train step", "eval": "evaluation"}
    # Three decimals: a ratio that rounds to the goal may still miss it.
    parts = [f"{names[k]} {v:.3f}x (goal {GOALS[k]:g}x: {'met' if v >= GOALS[k] else 'not met'})"
             for k, v in measured.items()]
    ours, theirs = j["default_path"]["maxrss_kib"], t["maxrss_kib"]
    parts.append(f"peak memory {_mib(ours)} against {_mib(theirs)} (goal: at most PyTorch's: "
                 f"{'met' if ours <= theirs else 'not met'})")
    text = "Against the goals, s7jax's default path over the PyTorch original: " + "; ".join(parts) + "."
    best = t.get("step_best")
    if best:
        text += (f" Against PyTorch at its best on the step ({best['variant'].replace('_', ' ')}, "
                 f"{best['images_per_s']:,.0f} img/s): "
                 f"{j['step_images_per_s'] / best['images_per_s']:.2f}x.")
    return text


def text_table(result: dict[str, Any]) -> str:
    """The result as an aligned plain-text table with its notes."""
    table = [HEADER, *rows(result)]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    align = [str.ljust, str.rjust, str.rjust, str.rjust]
    lines = ["  ".join(a(c, w) for a, c, w in zip(align, r, widths)) for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + [""] + _notes(result))


def markdown_table(result: dict[str, Any]) -> str:
    table = [HEADER, *rows(result)]
    lines = ["| " + " | ".join(r) + " |" for r in table]
    lines.insert(1, "|---|---:|---:|---:|")
    return "\n".join(lines)


def performance_markdown(paths: Iterable[str | Path], include_quick: bool = False) -> str:
    """Markdown for ``docs/performance.md``: one table per bench
    result file (``results/bench-cpu.json``, ``results/bench-gpu.json``),
    each under a line naming the machine. Files from ``--quick`` runs are
    left out unless ``include_quick``. Empty string when nothing is left."""
    sections = []
    for path in paths:
        result = json.loads(Path(path).read_text())
        if result.get("quick") and not include_quick:
            continue
        notes = _notes(result, dated=False)
        heading = f"**{result.get('device', '?').upper()}** ({Path(path).name})"
        body = "\n\n".join([heading, markdown_table(result), "\n".join(f"- {n}" for n in notes)])
        sections.append(body)
    if not sections:
        return ""
    intro = ("Speed-up is s7jax's rate over PyTorch's (images/s, or PyTorch's seconds over "
             "s7jax's): above 1, s7jax is faster. Both sides ran in the same `scripts/bench.py` "
             "run on the same machine, each in its own process.")
    return "\n\n".join([intro, *sections]) + "\n"


def step_table(result: dict) -> str:
    """``scripts/bench_step.py``'s result (``results/step-*.json``) as a Markdown table."""
    lines = ["| model6 train step, batch 128 | ms / step | vs s7jax | images/s | compile (s) "
             "| same state |", "|---|---:|---:|---:|---:|---|"]
    for name, r in result["variants"].items():
        lines.append(f"| {name} | {r['median_ms_per_step']:.1f} | {r['ratio_to_s7jax']:.2f}x | "
                     f"{r['images_per_s']:,.0f} | {r['compile_s']:.1f} | "
                     f"{'yes' if r['same_state_as_s7jax'] else 'no'} |")
    return "\n".join(lines)


def seeds_table(result: dict) -> str:
    """``scripts/bench_seeds.py``'s result (``results/seeds-*.json``) as a Markdown table."""
    default = result["default_strategy"]
    lines = ["| seeds | strategy | wall (s) | separate runs (s) | vs separate | compile (s) "
             "| peak memory |", "|---:|---|---:|---:|---:|---:|---:|"]
    for r in result["together"]:
        name = f"**{r['strategy']}** (default)" if r["strategy"] == default else r["strategy"]
        compiled = f"{r['compile_s']:.1f}" if r["compile_s"] else "-"  # not reported step by step
        lines.append(f"| {r['seeds']} | {name} | {r['wall_s']:.1f} | {r['separate_s']:.1f} | "
                     f"{r['ratio_to_separate']:.2f}x | {compiled} | "
                     f"{r['maxrss_mib']:,.0f} MiB |")
    return "\n".join(lines)


def parts_table(result: dict) -> str:
    """``scripts/bench_parts.py``'s result (``results/parts-*.json``) as two
    Markdown tables: the step's parts, summed over layers, and the epoch."""
    step_ms = result["step"]["ms"]
    groups: dict[str, dict] = {}
    for r in result["parts"]:
        g = groups.setdefault(r["part"], {"ms": 0.0, "flops": 0.0, "bytes": 0.0, "layers": 0})
        for k in ("ms", "flops", "bytes"):
            g[k] += r[k]
        g["layers"] += 1
    limit = result["limit"]

    def row(name, r, share_of_step=True):
        s = r["ms"] / 1e3
        gf, gb = r["flops"] / s / 1e9, r["bytes"] / s / 1e9
        share = max(gf / limit["gflops"], gb / limit["gbytes_per_s"])
        return (f"| {name} | {r['ms']:.2f} | "
                + (f"{100 * r['ms'] / step_ms:.0f}% | " if share_of_step else "| ")
                + f"{r['flops'] / 1e6:,.1f} | {r['bytes'] / 2**20:,.1f} | {gf:.1f} | {gb:.1f} | "
                f"{100 * share:.1f}% |")

    order = ["conv forward", "conv input gradient", "conv weight gradient"]
    groups = dict(sorted(groups.items(), key=lambda kv: (
        order.index(kv[0]) if kv[0] in order else len(order), kv[0].split()[0])))
    lines = [f"| {result['model']} train step, batch {result['batch_size']} | ms | of the step "
             "| MFLOP | MiB moved | GFLOP/s | GB/s | of the machine's limit |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, g in groups.items():
        lines.append(row(f"{name} ({g['layers']} layer{'s' if g['layers'] > 1 else ''})"
                         if g["layers"] > 1 else name, g))
    parts = {k: sum(g[k] for g in groups.values()) for k in ("ms", "flops", "bytes")}
    lines.append(row("sum of the parts", parts))
    rest = step_ms - parts["ms"]
    lines.append(f"| the rest (ReLU, loss, fusion across parts) | {rest:.2f} | "
                 f"{100 * rest / step_ms:.0f}% | | | | | |")
    lines.append(row("**the whole step**", result["step"]))
    steps = result["steps_per_epoch"]
    epoch = [f"| per epoch ({steps} steps) | ms each | times | s per epoch |",
             "|---|---:|---:|---:|",
             f"| train step | {step_ms:.2f} | {steps} | {step_ms * steps / 1e3:.2f} |"]
    total = step_ms * steps
    for r in result["per_step"]:
        epoch.append(f"| {r['part']} | {r['ms']:.2f} | {steps} | {r['ms'] * steps / 1e3:.2f} |")
        total += r["ms"] * steps
    for r in result["per_epoch"]:
        epoch.append(f"| {r['part']} | {r['ms']:.1f} | 1 | {r['ms'] / 1e3:.2f} |")
        total += r["ms"]
    epoch.append(f"| **an epoch, from its parts** | | | {total / 1e3:.2f} |")
    note = (f"The machine's limit, measured in the same run: {limit['gflops']:.0f} GFLOP/s "
            f"(a 2048^3 float32 matrix product) and {limit['gbytes_per_s']:.0f} GB/s, the "
            "faster of two elementwise passes: over 4 MiB, the size of the largest "
            f"activations ({limit.get('gbytes_per_s_4mib', 0):.0f} GB/s), and over 256 MiB "
            f"({limit.get('gbytes_per_s_256mib', 0):.0f} GB/s). A part's share is the larger "
            "of its FLOP rate over the peak and its byte rate over the bandwidth.")
    return "\n".join(lines) + "\n\n" + note + "\n\n" + "\n".join(epoch)


def refusals_table(rows: list[dict[str, Any]]) -> str:
    """``scripts/bench_refusals.py``'s result (``results/refusals-*.json``) as a Markdown table."""
    lines = ["| fault | exit | wall s | CPU s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['fault']} | {r['exit']} | {r['seconds']:.1f} | {r['cpu_seconds']:.1f} |"
              for r in rows]
    return "\n".join(lines)
