"""Everything worth measuring on one GPU, in one command (about 8 minutes).

    PYTHONPATH=. python scripts/gpu_check.py --out "$OUT"

is written for a GPU machine with no network and no TensorFlow: jax with
its CUDA plugin, flax, optax, chex, orbax-checkpoint, matplotlib, tqdm and
numpy (torch and torchvision for PyTorch's side of the benchmark, if present).
MNIST comes from the repository's IDX files, read with numpy. Each step runs
as its own process with a time limit; a step that fails or runs out of time
is reported and the others still run. The steps:

1. ``device``: JAX's backend and devices, and ``nvidia-smi``;
2. ``tests``: the test suite's modules that make sense there, ``-m "not
   tfds"`` (tests needing TensorFlow skip themselves);
3. ``bench``: ``scripts/bench.py``, s7jax against the PyTorch original on the
   same GPU -> ``<out>/results/bench-gpu.json``;
4. ``model6``: a full 15-epoch model6 run with the accelerator's default
   path (one compiled call per epoch) -> ``<out>/results/gpu/model6-seed-0/``;
5. ``model1``: model1's 15 epochs -> ``<out>/results/gpu/model1-seed-0/``;
6. ``seeds``: 16 seeds of model6's recipe as one vectorised program
   (``scripts/sweep.py --together``) -> ``<out>/results/gpu-seeds/``;
7. ``referee``: model1 trained by PyTorch with the original recipe
   (``scripts/referee.py``, needs torch) -> ``<out>/results/model1/torch-seed-0/``,
   the one referee run a 2-core CPU cannot afford.

It ends with a summary table (also ``<out>/gpu_check.json``, every step's
log in ``<out>/logs/``): each step's status and seconds, and for the runs
the compile time, the wall time, the training time and the last three test
accuracies. ``<out>/results/`` mirrors the repository's ``results/``, to be
copied over and committed. ``--dry-run`` runs the same steps with tiny
sizes, on any machine, so that the script cannot rot (``tests/test_gpu_check.py``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from s7jax.cli import OneLineErrorParser  # noqa: E402

# The test modules worth running on an accelerator (the others are about
# TensorFlow, the CLI on CPU, the notebook or the CPU benchmarks).
GPU_TESTS = ["tests/test_models.py", "tests/test_ops.py", "tests/test_train.py",
             "tests/test_data.py", "tests/test_parity.py",
             "tests/test_gpu_check.py::test_device_pipeline_trains_without_tensorflow"]
TINY_RUN = ["--epochs", "1", "--train-subset", "512", "--test-subset", "256", "--batch-size", "64",
            "--eval-batch-size", "128"]


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for everything the check writes")
    p.add_argument("--dry-run", action="store_true",
                   help="tiny sizes and short limits, on any machine (the test suite runs this)")
    p.add_argument("--only", nargs="+",
                   choices=["device", "tests", "bench", "model6", "model1", "seeds", "referee"],
                   help="run only these steps")
    return p.parse_args(argv)


def steps(out: Path, dry_run: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of each step."""
    py = sys.executable
    results = out / "results"
    device = [py, "-c", "import jax; print('JAX', jax.__version__, 'backend', jax.default_backend()); "
                        "print(jax.devices())"]
    tests = [py, "-m", "pytest", "-q", "-m", "not tfds", "-p", "no:cacheprovider", *GPU_TESTS]
    bench = [py, "scripts/bench.py", "--out", str(results / "bench-gpu.json")]
    train = [py, "scripts/train.py", "--no-progress", "--data-source", "idx", "--seed", "0"]
    runs = {m: [*train, "--model", m, "--workdir", str(results / "gpu" / f"{m}-seed-0")]
            for m in ("model6", "model1")}
    sweep = [py, "scripts/sweep.py", "--model", "model6", "--seeds", "16", "--together",
             "--no-progress", "--data-source", "idx", "--results", str(results / "gpu-seeds")]
    referee = [py, "scripts/referee.py", "--model", "model1", "--seed", "0", "--no-progress",
               "--overwrite", "--results", str(results)]
    if dry_run:
        tests = [*tests[:-1], "-k", "exact_parameter_totals or epoch_scan_sees"]
        referee[referee.index("model1")] = "model2"  # small enough for a CPU
        referee += ["--epochs", "1", "--train-subset", "512", "--test-subset", "256"]
        bench += ["--quick", "--skip-torch"]
        runs = {m: [*cmd, *TINY_RUN] for m, cmd in runs.items()}
        sweep[sweep.index("16")] = "2"
        sweep += TINY_RUN
    # At most 8 minutes in all, so that one 10-minute device call holds it.
    limits = dict(device=30, tests=70, bench=100, model6=60, model1=90, seeds=70, referee=60)
    if dry_run:
        limits = {k: 300 for k in limits}
    return [("device", device, limits["device"]), ("tests", tests, limits["tests"]),
            ("bench", bench, limits["bench"]), ("model6", runs["model6"], limits["model6"]),
            ("model1", runs["model1"], limits["model1"]), ("seeds", sweep, limits["seeds"]),
            ("referee", referee, limits["referee"])]


def run_step(name: str, cmd: list[str], limit: int, logs: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    log_path = logs / f"{name}.log"
    print(f"[gpu_check] {name}: {' '.join(cmd)} (limit {limit} s)", flush=True)
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit)
        status, output = ("ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})",
                          proc.stdout + proc.stderr)
    except subprocess.TimeoutExpired as e:
        status = f"timed out after {limit} s"
        output = "".join(x.decode() if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    except OSError as e:
        status, output = f"could not start ({e.strerror or e})", ""
    seconds = time.perf_counter() - t
    log_path.write_text(output)
    tail = [line for line in output.splitlines() if line.strip()][-3:]
    print(f"[gpu_check] {name}: {status} in {seconds:.1f} s" + "".join(f"\n    {x}" for x in tail),
          flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 2), "command": cmd,
            "log": str(log_path), "output": output}


def describe_run(step: dict, workdir: Path) -> dict:
    """Compile time (from the run's log), training time and accuracies (from its files)."""
    compiled = re.search(r"compiled the epoch program in ([\d.]+) s", step["output"])
    rows = []
    if (workdir / "metrics.jsonl").is_file():
        rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines() if x]
    return {"workdir": str(workdir), "epochs": len(rows),
            "compile_s": float(compiled.group(1)) if compiled else None,
            "train_s": round(sum(r["seconds"] for r in rows), 3) if rows else None,
            "last3_test_acc": [r["test_acc"] for r in rows[-3:]],
            "best_test_acc": max((r["test_acc"] for r in rows), default=None)}


def summary_table(records: list[dict]) -> str:
    lines = [f"{'step':<8} {'status':<28} {'wall s':>8}  details"]
    for r in records:
        details = ""
        if "run" in r:
            run = r["run"]
            details = (f"epochs {run['epochs']}, compile {run['compile_s']} s, "
                       f"train {run['train_s']} s, last-3 test acc {run['last3_test_acc']}")
        elif r["step"] == "tests":
            found = re.findall(r"^.*\d+ (?:passed|failed).*$", r["output"], re.M)
            details = found[-1].strip("= ") if found else ""
        elif r["step"] == "seeds":
            found = re.findall(r"^model6 \(default recipe\): last-3 mean .*$", r["output"], re.M)
            details = found[-1] if found else ""
        elif r["step"] == "device":
            details = next((x for x in r["output"].splitlines() if x.startswith("JAX")), "")
        lines.append(f"{r['step']:<8} {r['status']:<28} {r['seconds']:>8.1f}  {details}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    records = []
    for name, cmd, limit in steps(out, args.dry_run):
        if args.only and name not in args.only:
            continue
        if name in ("model6", "model1"):
            shutil.rmtree(out / "results" / "gpu" / f"{name}-seed-0", ignore_errors=True)
        if name == "referee" and importlib.util.find_spec("torch") is None:
            records.append({"step": name, "status": "skipped (no torch)", "seconds": 0.0,
                            "command": cmd, "output": ""})
            continue
        record = run_step(name, cmd, limit, logs)
        if name == "device" and shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
            record["output"] += smi.stdout
        if name in ("model6", "model1"):
            record["run"] = describe_run(record, out / "results" / "gpu" / f"{name}-seed-0")
        records.append(record)
    table = summary_table(records)
    print("\n" + table)
    (out / "gpu_check.json").write_text(json.dumps(
        {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
         "steps": [{k: v for k, v in r.items() if k != "output"} for r in records],
         "table": table}, indent=2) + "\n")
    print(f"\nwrote {out / 'gpu_check.json'}, logs in {logs}")
    return 0 if all(r["status"] in ("ok", "skipped (no torch)") for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
