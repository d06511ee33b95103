"""Everything worth measuring on one GPU, in one command (at most 7 minutes).

    PYTHONPATH=. python scripts/gpu_check.py --out "$OUT"

is written for a GPU machine with no network and no TensorFlow: jax with
its CUDA plugin, flax, optax, chex, orbax-checkpoint, matplotlib, tqdm, numpy,
torch and torchvision. MNIST comes from the repository's IDX files, read with
numpy; TensorFlow and TFDS are made unimportable in every step
(``tests/no_tensorflow``), so a machine that has them runs what one without
them runs. Each step runs as its own process group with a time limit, killed
whole when it runs out (a benchmark's worker, a test's training process and
their share of GPU memory go with it); a step that fails or runs out of time
is reported and the others still run. The steps:

1. ``device``: JAX's backend and devices, and ``nvidia-smi``;
2. ``tests``: the tests of :data:`TESTS`, ``-m "not tfds"``;
3. ``bench``: ``scripts/bench.py``, s7jax against the PyTorch original on the
   same GPU -> ``<out>/results/bench-gpu.json`` (fails unless torch and
   torchvision import: the comparison is the point);
4. ``model6``: a full 15-epoch model6 run, one compiled call per epoch
   (``--pipeline scan``, the accelerator's default) ->
   ``<out>/results/gpu/model6-seed-0/``;
5. ``model1``: model1's 15 epochs -> ``<out>/results/gpu/model1-seed-0/``;
6. ``seeds``: 16 seeds of model6's recipe as one vectorised program
   (``scripts/sweep.py --strategy vmap``, each seed's checkpoint written once,
   at the end) -> ``<out>/results/gpu-seeds/``;
7. ``strategies``: ``scripts/bench_seeds.py``, 4 seeds in one process by
   each strategy against 4 separate runs ->
   ``<out>/results/seeds-gpu.json``;
8. ``referee``: model1 trained by PyTorch with the original recipe
   (``scripts/referee.py``, fails unless torch imports) ->
   ``<out>/results/model1/torch-seed-0/``, the one referee run a 2-core CPU
   cannot afford.

The whole check keeps to a budget (``--budget``, 420 s on a GPU): each step
gets its own limit or what is left of the budget, whichever is less, and a
step with less than :data:`MIN_STEP_S` seconds left is skipped, so the summary
is always written within one 10-minute command, with room in a 15-minute
device lease for a second try (``--only`` the steps that did not pass).

It ends with a summary table, printed and written with every step's status,
seconds and command to ``<out>/results/gpu/gpu_check.json`` (every step's
log in ``<out>/logs/``): for the runs the compile time of the epoch program,
the wall time, the training time and the last three test accuracies.
``<out>/results/`` mirrors the repository's ``results/``, to be copied over
and committed (the runs' ``checkpoints/`` are deleted at the end: git
ignores them, and one command's output must come back whole).

``--dry-run`` is the rehearsal: the same steps and the same tests, with tiny
runs and limits sized from it on a 2-core CPU (``tests/test_gpu_check.py``
runs it on every CI run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from a checkout without installing

from s7jax.cli import OneLineErrorParser  # noqa: E402

# On the PYTHONPATH of every step: TensorFlow and TFDS unimportable.
NO_TENSORFLOW = ROOT / "tests" / "no_tensorflow"
# The tests worth running on an accelerator, few enough to take about two
# minutes: the custom layers, the data pipelines, the steps and an epoch per
# call against a call per step (equal figures, and a resume after Ctrl-C),
# and the PyTorch port, at the accelerator's precision. The rest of the suite
# is about TensorFlow, the CLI, files, the notebook or the CPU benchmarks.
TRAIN_TESTS = ["test_train_steps_lower_the_loss_on_a_fixed_batch",
               "test_several_steps_per_call_equal_single_steps_up_to_rounding",
               "test_eval_step_ignores_masked_examples",
               "test_precise_bn_weighs_a_short_last_chunk_by_its_size",
               "test_an_epoch_per_call_trains_what_the_device_pipeline_trains",
               "test_an_epoch_per_call_resumes_after_ctrl_c"]
TESTS = ["tests/test_models.py::test_exact_parameter_totals", "tests/test_ops.py",
         "tests/test_data.py", *(f"tests/test_train.py::{t}" for t in TRAIN_TESTS),
         "tests/test_parity.py",
         "tests/test_gpu_check.py::test_device_pipeline_trains_without_tensorflow"]
STEPS = ("device", "tests", "bench", "model6", "model1", "seeds", "strategies", "referee")
TINY_RUN = ["--epochs", "1", "--train-subset", "512", "--test-subset", "256", "--batch-size", "64",
            "--eval-batch-size", "128"]
# Seconds per step. On a GPU: from the first run on one H200
# (results/gpu/gpu_check.json): the tests took 113 s, model6 35 s, model1 30 s,
# the 16 seeds 78 s; the benchmark ran out of 90 s there but took 62 s alone.
# A second try (results/gpu/gpu_check-retry.json): the referee took 42 s, and
# the strategies step ran out of 150 s, its four separate runs alone taking
# 73 s, so it gets 240 s and stays unmeasured. Dry run: about twice
# what the rehearsal took on the 2-core CPU, shared with other work, with
# TensorFlow blocked. The budget stops the check at 7 minutes whatever the
# steps take: one 10-minute device command holds it, and a 15-minute lease a
# second try (``--only`` what was skipped).
LIMITS = dict(device=45, tests=150, bench=150, model6=60, model1=60, seeds=110, strategies=240,
              referee=120)
DRY_LIMITS = dict(device=40, tests=360, bench=240, model6=150, model1=120, seeds=90,
                  strategies=300, referee=120)
BUDGET_S, DRY_BUDGET_S = 420, 1400
MIN_STEP_S = 20  # a step given less is skipped: it could not even start JAX


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="folder for everything the check writes")
    p.add_argument("--dry-run", action="store_true",
                   help="the rehearsal: tiny sizes, on any machine (the test suite runs this)")
    p.add_argument("--only", nargs="+", choices=STEPS, help="run only these steps")
    p.add_argument("--budget", type=float,
                   help=f"seconds for the whole check (default {BUDGET_S}, dry run {DRY_BUDGET_S})")
    return p.parse_args(argv)


def steps(out: Path, dry_run: bool) -> list[tuple[str, list[str], int]]:
    """(name, command, time limit in seconds) of each step."""
    py = sys.executable
    results = out / "results"
    device = [py, "-c", "import jax; print('JAX', jax.__version__, 'backend', jax.default_backend()); "
                        "print(jax.devices())"]
    tests = [py, "-m", "pytest", "-q", "-m", "not tfds", "-p", "no:cacheprovider", *TESTS]
    bench = [py, "scripts/bench.py", "--out", str(results / "bench-gpu.json")]
    train = [py, "scripts/train.py", "--no-progress", "--data-source", "idx", "--pipeline", "scan",
             "--seed", "0"]
    runs = {m: [*train, "--model", m, "--workdir", str(results / "gpu" / f"{m}-seed-0")]
            for m in ("model6", "model1")}
    sweep = [py, "scripts/sweep.py", "--model", "model6", "--seeds", "16", "--strategy", "vmap",
             "--checkpoint-every", "15", "--no-progress", "--data-source", "idx",
             "--results", str(results / "gpu-seeds")]
    strategies = [py, "scripts/bench_seeds.py", "--seeds", "4", "--epochs", "1",
                  "--train-images", "6400", "--out", str(results / "seeds-gpu.json")]
    referee = [py, "scripts/referee.py", "--model", "model1", "--seed", "0", "--no-progress",
               "--overwrite", "--results", str(results)]
    limits = LIMITS
    if dry_run:
        limits = DRY_LIMITS
        referee[referee.index("model1")] = "model2"  # small enough for a CPU
        referee += ["--epochs", "1", "--train-subset", "512", "--test-subset", "256"]
        bench += ["--quick"]
        runs = {m: [*cmd, *TINY_RUN] for m, cmd in runs.items()}
        sweep[sweep.index("16")] = "2"
        sweep += TINY_RUN
        strategies[strategies.index("6400")] = "256"
        strategies[strategies.index("4")] = "2"
    commands = dict(device=device, tests=tests, bench=bench, **runs, seeds=sweep,
                    strategies=strategies, referee=referee)
    return [(name, commands[name], limits[name]) for name in STEPS]


# What the PyTorch steps import: the benchmark's original recipe augments with
# torchvision, the referee's model1 needs torch alone.
NEEDS = {"bench": ("torch", "torchvision"), "referee": ("torch",)}


def missing(modules: tuple[str, ...]) -> str | None:
    """Why ``modules`` do not import here, or None (a torchvision built for
    another torch does not import either)."""
    proc = subprocess.run([sys.executable, "-c", f"import {', '.join(modules)}"],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode == 0:
        return None
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    return lines[-1] if lines else f"exit {proc.returncode}"


def kill_group(proc: subprocess.Popen, grace_s: float = 10) -> None:
    """End the step's whole process group: SIGTERM, then SIGKILL whatever is
    still there after ``grace_s``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return  # the group is empty
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader: a zombie still counts as a member
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def step_env() -> dict[str, str]:
    path = [str(NO_TENSORFLOW), str(ROOT), os.environ.get("PYTHONPATH", "")]
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p),
                TF_CPP_MIN_LOG_LEVEL="2")


def run_step(name: str, cmd: list[str], limit: float, logs: Path) -> dict:
    log_path = logs / f"{name}.log"
    print(f"[gpu_check] {name}: {' '.join(cmd)} (limit {limit:.0f} s)", flush=True)
    t = time.perf_counter()
    with open(log_path, "w") as log:
        try:
            # A session of its own: the step and everything it starts form
            # one process group, ended together.
            proc = subprocess.Popen(cmd, cwd=ROOT, env=step_env(), stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as e:
            status = f"could not start ({e.strerror or e})"
        else:
            try:
                code = proc.wait(timeout=limit)
                status = "ok" if code == 0 else f"failed (exit {code})"
            except subprocess.TimeoutExpired:
                status = f"timed out after {limit:.0f} s"
            kill_group(proc)  # also whatever a finished step left running
    seconds = time.perf_counter() - t
    output = log_path.read_text(errors="replace")
    tail = [line for line in output.splitlines() if line.strip()][-3:]
    print(f"[gpu_check] {name}: {status} in {seconds:.1f} s" + "".join(f"\n    {x}" for x in tail),
          flush=True)
    return {"step": name, "status": status, "seconds": round(seconds, 2), "limit_s": round(limit),
            "command": cmd, "log": str(log_path), "output": output}


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
    lines = [f"{'step':<8} {'status':<44} {'wall s':>8}  details"]
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
        lines.append(f"{r['step']:<8} {r['status']:<44} {r['seconds']:>8.1f}  {details}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).absolute()
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    budget = args.budget or (DRY_BUDGET_S if args.dry_run else BUDGET_S)
    start = time.perf_counter()
    records = []
    for name, cmd, limit in steps(out, args.dry_run):
        if args.only and name not in args.only:
            continue
        left = budget - (time.perf_counter() - start)
        if left < MIN_STEP_S:
            records.append({"step": name, "status": "skipped (out of budget)", "seconds": 0.0,
                            "command": cmd, "output": ""})
            continue
        if name in ("model6", "model1"):
            shutil.rmtree(out / "results" / "gpu" / f"{name}-seed-0", ignore_errors=True)
        why = missing(NEEDS[name]) if name in NEEDS else None
        if why:  # the comparison is the point: without it the step fails
            status = f"failed ({' and '.join(NEEDS[name])} must import)"
            records.append({"step": name, "status": status, "seconds": 0.0, "command": cmd,
                            "output": why})
            print(f"[gpu_check] {name}: {status}: {why}", flush=True)
            continue
        record = run_step(name, cmd, min(limit, left), logs)
        if name == "device" and shutil.which("nvidia-smi"):
            smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
            record["output"] += smi.stdout
            (logs / "device.log").write_text(record["output"])
        if name in ("model6", "model1"):
            record["run"] = describe_run(record, out / "results" / "gpu" / f"{name}-seed-0")
        records.append(record)
    # Git ignores them, and one command's output must come back whole.
    for folder in (out / "results").rglob("checkpoints"):
        shutil.rmtree(folder, ignore_errors=True)
    table = summary_table(records)
    print("\n" + table)
    summary = out / "results" / "gpu" / "gpu_check.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(
        {"dry_run": args.dry_run, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
         "budget_s": budget, "seconds": round(time.perf_counter() - start, 1),
         "steps": [{k: v for k, v in r.items() if k not in ("output", "log")} for r in records],
         "table": table}, indent=2) + "\n")
    print(f"\nwrote {summary}, logs in {logs}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
