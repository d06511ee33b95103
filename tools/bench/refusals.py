"""How fast each fault that needs no data is refused, and in how many lines.

    python scripts/bench_refusals.py [--repeats 3] [--out FILE.json]

runs ``scripts/train.py`` and ``scripts/evaluate.py`` on each fault in a
fresh process (as a user meets it), checks that it ends with its exit code
and exactly one line on stderr, and prints the median wall time of
``--repeats`` runs, and their CPU time, as a Markdown table (the one
``docs/training.md`` shows under "Failure modes", from ``results/refusals-cpu.json``).
Every case is refused before TensorFlow, TFDS or the data load; the time is
Python, JAX, Flax and Orbax starting up. The folders it needs (a recorded run
without checkpoints, a run with damaged checkpoints, a locked folder, a
damaged weights file) are made in a temporary folder.

A tool of the repository, not of the installed package: it runs the
checkout's scripts and copies a recorded run from its ``results/``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from s7jax.cli import OneLineErrorParser, exit_on_known_errors
from tools.bench.measure import run_timed, write_result
from tools.bench.tables import refusals_table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: scripts/ and results/


def make_cases(tmp: Path) -> list[tuple[str, list[str], int]]:
    """``(fault, command line, expected exit code)`` for each case, with the
    folders they need made under ``tmp``."""
    import jax

    from s7jax.runs import checkpoint, runfiles, weights
    from s7jax.config import default_config
    from s7jax.models import get_model, init_variables
    from s7jax.training.steps import initial_state, learning_rate_schedule

    recorded = tmp / "recorded"  # as under results/: metrics, no checkpoints
    shutil.copytree(ROOT / "results" / "model6" / "seed-0", recorded)
    bad_config = tmp / "bad-config"
    shutil.copytree(recorded, bad_config)
    record = json.loads((bad_config / "config.json").read_text())
    del record["config"]["precise_bn"]
    (bad_config / "config.json").write_text(json.dumps(record))

    damaged = tmp / "damaged"  # two checkpoints, both with flipped bytes
    config = default_config("model6", epochs=2, train_subset=1024, batch_size=128)
    damaged.mkdir()
    runfiles.write_config(damaged, config)
    state, _ = initial_state(config, learning_rate_schedule(config, 8))
    for step in (8, 16):
        checkpoint.save(runfiles.checkpoint_dir(damaged), step, state,
                        {"epoch": step // 8, "history": [], "partial": None})
        files = [f for f in (runfiles.checkpoint_dir(damaged) / str(step)).rglob("*")
                 if f.is_file() and f.parent.name == "d"]
        target = max(files, key=lambda f: f.stat().st_size)
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(64)
        target.write_bytes(bytes(raw))

    bad_weights = tmp / "weights.msgpack"
    weights.save(bad_weights, "model6", init_variables(get_model("model6"), jax.random.key(0)))
    raw = bytearray(bad_weights.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = bytes(b ^ 0x5A for b in raw[len(raw) // 2:][:64])
    bad_weights.write_bytes(bytes(raw))

    train, evaluate = "scripts/train.py", "scripts/evaluate.py"
    return [
        ("a bad flag", [train, "--seed", "-1"], 2),
        ("an infinite learning rate", [train, "--lr", "inf"], 2),
        ("--steps-per-call with --pipeline scan", [train, "--pipeline", "scan",
                                                   "--steps-per-call", "2"], 2),
        ("a folder that holds a run", [train, "--workdir", str(recorded)], 2),
        ("a folder in use by a live process", [train, "--workdir", str(tmp / "held")], 2),
        ("--resume of a recorded run without checkpoints", [train, "--resume", str(recorded)], 2),
        ("--resume with a setting missing from config.json", [train, "--resume", str(bad_config)], 2),
        ("--resume with no intact checkpoint", [train, "--resume", str(damaged)], 2),
        ("evaluate a damaged weights file", [evaluate, "--weights", str(bad_weights)], 2),
    ]


def refusal(command: list[str], code: int) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds, the stderr line) of one run of ``command``,
    which must exit ``code`` with exactly one line on stderr. The CPU time is
    the steadier figure on a shared machine."""
    proc, times = run_timed([sys.executable, *command], cwd=ROOT, timeout=300)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    if proc.returncode != code or len(lines) != 1:
        raise SystemExit(f"error: {' '.join(command)} exited {proc.returncode} (expected {code}) "
                         f"with {len(lines)} lines on stderr: {lines[:3]}")
    return times["wall_s"], times["cpu_s"], lines[0]


def main(argv: list[str] | None = None) -> int:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="runs per case (the median is shown)")
    p.add_argument("--out", help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    with exit_on_known_errors(), tempfile.TemporaryDirectory(prefix="s7jax-refusals-") as tmp:
        tmp = Path(tmp)
        cases = make_cases(tmp)
        holder = subprocess.Popen(  # holds tmp/held, as a run in progress does
            [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[2]);"
             "from s7jax.runs import runlock\nwith runlock.claim(sys.argv[1]):\n"
             "    print('held', flush=True); time.sleep(3600)", str(tmp / "held"), str(ROOT)],
            stdout=subprocess.PIPE, text=True)
        try:
            holder.stdout.readline()
            rows = []
            for fault, command, code in cases:
                runs = [refusal(command, code) for _ in range(args.repeats)]
                rows.append({"fault": fault, "exit": code,
                             "seconds": statistics.median(s for s, _, _ in runs),
                             "cpu_seconds": statistics.median(c for _, c, _ in runs),
                             "line": runs[0][2].replace(str(tmp), "TMP")})
        finally:
            holder.kill()
            holder.wait()
    print(f"median of {args.repeats} runs each, {os.cpu_count()} CPU cores, load average "
          f"{os.getloadavg()[0]:.1f}; each ended with exactly one line on stderr\n")
    print(refusals_table(rows))
    if args.out:
        write_result(rows, args.out, "refusals")
    return 0


if __name__ == "__main__":
    sys.exit(main())
