"""What each way of training N seeds in one process costs, against N separate runs.

    python scripts/bench_seeds.py    # or python -m tools.bench.seeds

times model6's recipe (a short run: ``--train-images`` images, ``--epochs``
epochs, batch 128) as ``sweep.py --seeds N --strategy S`` trains it, for
N = 1, 2, 4, 8 and each strategy (``vmap``, ``map``: one program over the
seeds; ``sequential``: each seed's own run in turn), against the same seeds
as separate runs (``train.py --seed s``, one process each: start-up, data and
compile included). Every figure is a whole process's wall time, with the
compile the program reports and the process's peak memory; ``separate`` for
N sums the separate runs of seeds 0 .. N-1, measured once in the same run.
Every process uses one compile cache of the bench's own (not the user's, so
that a second bench starts as the first did), filled with ``train.py``'s
programs before the clock: the separate runs and ``sequential`` load theirs
from it, while ``vmap`` and ``map`` compile their programs over N seeds
inside the clock (the compile column). Writes ``results/seeds-<backend>.json``, the default
strategy of ``sweep.py --together`` on this backend marked.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tools.bench.measure import command, environment, log, parser, write_result

ROOT = Path(__file__).resolve().parents[2]
STRATEGIES = ("vmap", "map", "sequential")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, "seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8], help="the Ns to time")
    p.add_argument("--train-images", type=int, default=2048, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=2, help="epochs of each run")
    p.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    args = p.parse_args(argv)
    if min(args.seeds) < 1 or args.epochs < 1 or args.train_images < 128:
        p.error("--seeds and --epochs must be >= 1, --train-images >= 128")
    return args


def timed_process(cmd: list[str], env: dict[str, str]) -> dict:
    """Wall seconds, peak memory (KiB) and the compile it reports, of one command."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"error: {' '.join(cmd[1:4])}... failed: {out.strip().splitlines()[-1:]}")
    compiled = [float(s) for s in re.findall(r"compiled the epoch program in ([\d.]+) s", out)]
    return {"wall_s": wall, "maxrss_mib": usage.ru_maxrss / 1024, "compile_s": sum(compiled)}


def run(args: argparse.Namespace, argv: list[str]) -> int | None:
    import jax

    from s7jax.training.seeds import default_strategy

    short = ["--model", "model6", "--epochs", str(args.epochs), "--train-subset",
             str(args.train_images), "--test-subset", "1000", "--no-progress"]
    script = lambda name: [sys.executable, str(ROOT / "scripts" / f"{name}.py")]  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "S7JAX_COMPILE_CACHE": f"{tmp}/compile-cache"}
        for how in ("auto", "scan"):  # fill the compile cache, untimed
            subprocess.run([*script("train"), *short, "--pipeline", how, "--workdir",
                            f"{tmp}/warm-{how}"], capture_output=True, check=True, env=env)
        separate = []
        for s in range(max(args.seeds)):
            separate.append(timed_process([*script("train"), *short, "--seed", str(s),
                                           "--workdir", f"{tmp}/separate-{s}"], env))
            log(f"seed {s} alone: {separate[-1]['wall_s']:.1f} s")
        rows = []
        for n in args.seeds:
            alone = sum(r["wall_s"] for r in separate[:n])
            for how in args.strategies:
                r = timed_process([*script("sweep"), *short, "--seeds", str(n), "--strategy",
                                   how, "--results", f"{tmp}/{how}-{n}"], env)
                rows.append({"seeds": n, "strategy": how, **r, "separate_s": alone,
                             "ratio_to_separate": r["wall_s"] / alone})
                log(f"{n} seeds, {how}: {r['wall_s']:.1f} s, "
                    f"{r['wall_s'] / alone:.2f}x {n} separate runs")
    result = {
        "command": "python scripts/bench_seeds.py " + " ".join(argv),
        "date": datetime.date.today().isoformat(), **environment(),
        "train_images": args.train_images, "epochs": args.epochs, "batch_size": 128,
        "default_strategy": default_strategy(jax.default_backend()),
        "separate": separate, "together": rows,
    }
    write_result(result, args.out, "seeds")


if __name__ == "__main__":
    sys.exit(command(parse_args, run))
