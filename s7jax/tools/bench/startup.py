"""What the persistent compilation cache saves a second identical run.

    python scripts/bench_startup.py

runs the same short training (``scripts/train.py`` with model6's recipe on
a 2,048-image subset, one epoch) three times, each in a fresh process: with
an empty compilation cache, again with the cache that run filled, and with
the cache turned off (``S7JAX_NO_COMPILE_CACHE=1``). It reports each
process's wall time and the time its first epoch took (compiles included),
and writes ``results/startup-<backend>.json``.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from s7jax.cli import OneLineErrorParser, exit_on_known_errors  # noqa: E402

RUN = ["--model", "model6", "--epochs", "1", "--train-subset", "2048", "--test-subset", "1000",
       "--precise-bn", "2000", "--no-progress"]


def timed_run(workdir: Path, env: dict) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "train.py"), *RUN,
                           "--workdir", str(workdir)], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=900)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"error: the timed run failed (exit {proc.returncode}): "
                         f"{proc.stderr.strip().splitlines()[-1:]}")
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
    return {"wall_s": wall, "first_epoch_s": rows[0]["seconds"]}


def main(argv=None) -> int:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="result JSON (default results/startup-<backend>.json)")
    args = p.parse_args(argv)
    with exit_on_known_errors():
        import jax

        with tempfile.TemporaryDirectory(prefix="s7jax-startup-") as tmp:
            tmp = Path(tmp)
            cache = {"S7JAX_COMPILE_CACHE": str(tmp / "cache")}
            runs = {"empty cache": timed_run(tmp / "a", cache),
                    "warm cache": timed_run(tmp / "b", cache),
                    "no cache": timed_run(tmp / "c", {"S7JAX_NO_COMPILE_CACHE": "1"})}
        for name, r in runs.items():
            print(f"{name:>12}: {r['wall_s']:6.1f} s in all, first epoch {r['first_epoch_s']:.1f} s")
        result = {"command": "python scripts/bench_startup.py", "run": RUN,
                  "date": datetime.date.today().isoformat(), "backend": jax.default_backend(),
                  "runs": runs,
                  "saved_s": runs["no cache"]["wall_s"] - runs["warm cache"]["wall_s"]}
        out = Path(args.out) if args.out else ROOT / "results" / f"startup-{result['backend']}.json"
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
