"""What the persistent compilation cache saves a second identical run.

    python scripts/bench_startup.py

runs the same short training (``scripts/train.py`` with model6's recipe on
a 2,048-image subset, one epoch) three times, each in a fresh process: with
an empty compilation cache, again with the cache that run filled, and with
the cache turned off (``S7JAX_NO_COMPILE_CACHE=1``). It reports each
process's wall time and the time its first epoch took (compiles included),
and writes ``results/startup-<backend>.json``.

A tool of the repository, not of the installed package: it runs the
checkout's ``scripts/train.py``.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import tempfile
from pathlib import Path

from s7jax.cli import exit_on_known_errors
from tools.bench.measure import environment, parser, run_timed, write_result

ROOT = Path(__file__).resolve().parents[2]  # the checkout: scripts/ and results/

RUN = ["--model", "model6", "--epochs", "1", "--train-subset", "2048", "--test-subset", "1000",
       "--precise-bn", "2000", "--no-progress"]


def timed_run(workdir: Path, env: dict[str, str]) -> dict[str, float]:
    """The short training in a fresh process, with ``env`` added: its wall
    time, and its first epoch's (compiles included) as it recorded it."""
    proc, times = run_timed([sys.executable, str(ROOT / "scripts" / "train.py"), *RUN,
                             "--workdir", str(workdir)], env={**os.environ, **env}, timeout=900)
    wall = times["wall_s"]
    if proc.returncode != 0:
        raise SystemExit(f"error: the timed run failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
    return {"wall_s": wall, "first_epoch_s": rows[0]["seconds"]}


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__, "startup")
    args = p.parse_args(argv)
    with exit_on_known_errors():
        env = environment()
        with tempfile.TemporaryDirectory(prefix="s7jax-startup-") as tmp:
            tmp = Path(tmp)
            cache = {"S7JAX_COMPILE_CACHE": str(tmp / "cache")}
            runs = {"empty cache": timed_run(tmp / "a", cache),
                    "warm cache": timed_run(tmp / "b", cache),
                    "no cache": timed_run(tmp / "c", {"S7JAX_NO_COMPILE_CACHE": "1"})}
        for name, r in runs.items():
            print(f"{name:>12}: {r['wall_s']:6.1f} s in all, first epoch {r['first_epoch_s']:.1f} s")
        result = {"command": "python scripts/bench_startup.py", "run": RUN,
                  "date": datetime.date.today().isoformat(), **env, "runs": runs,
                  "saved_s": runs["no cache"]["wall_s"] - runs["warm cache"]["wall_s"]}
        write_result(result, args.out, "startup", ROOT / "results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
