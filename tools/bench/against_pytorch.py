"""Time s7jax's model6 training against the original PyTorch recipe, in one run.

    python scripts/bench.py        # or python -m tools.bench.against_pytorch

measures, on this machine and in this one command, each side in its own
subprocess (so that their peak memory is their own):

* s7jax (model6, its default recipe, batch 128; :mod:`.s7jax_side`): the
  train step's compile time; the jitted step alone on a fixed batch
  (images/s, clocks read after ``block_until_ready``); one full training
  epoch end to end, input pipeline and steps, with the on-device pipeline
  (``data.DeviceTrainData``, the default on a CPU), as one compiled call
  (``--pipeline scan``), with the tf.data pipeline (``data.train_dataset``),
  and with it and 4 steps per compiled call (``--steps-per-call 4``); the
  evaluation of the 10k test images; peak resident memory (``getrusage``
  maxrss) after each stage, and as the default run leaves it, before the
  one-call epoch and TensorFlow (the tf.data epochs run last) are loaded.
* PyTorch (the original recipe; :mod:`.pytorch_side`): model6 from
  ``s7jax.reference.torch_reference``, RandomRotation(7) + ColorJitter(brightness=0.2,
  contrast=0.2) + ToTensor + Normalize((0.1307,), (0.3081,)) through a
  DataLoader with 2 workers, batch 128, SGD lr 0.01 momentum 0.9, trained by
  the referee's own loop: the same quantities (its step on a fixed batch,
  one epoch end to end, the 10k evaluation); and its step as a speed-minded
  user would run it: channels-last, ``torch.compile``, both
  (``--no-tuned-torch`` skips them).

It prints a table with the s7jax/PyTorch speed-up (>1: s7jax faster) and
writes ``results/bench-<cpu|gpu>.json`` (the device is JAX's default backend)
with the machine, versions, date and command. ``--quick`` runs tiny counts on
a subset, for smoke tests (written to a temporary folder unless ``--out``).
Without PyTorch installed (``pip install -e '.[bench]'``), or with
``--skip-torch``, only the s7jax side runs.

MNIST comes from the source the default run reads (``s7jax.data.load_mnist``,
the IDX files on a CPU); the PyTorch side reads the same uint8 arrays.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from s7jax.cli import OneLineErrorParser, add_data_flags  # noqa: E402
from tools.bench.measure import command, environment, log, write_result  # noqa: E402

BATCH_SIZE = 128
TORCH_EVAL_BATCH_SIZE = 128  # the original notebooks used the training loader's settings
TORCH_WORKERS = 2
FULL = dict(steps=100, warmup=5, epochs_measured=1, train_images=None, test_images=None)
QUICK = dict(steps=3, warmup=1, epochs_measured=1, train_images=1024, test_images=1000)
PACKAGES = ("jax", "jaxlib", "flax", "optax", "tensorflow", "tensorflow-cpu",
            "tensorflow-datasets", "numpy", "torch", "torchvision", "pillow")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs-measured", type=int,
                   help=f"full training epochs timed per pipeline, their mean reported "
                        f"(default {FULL['epochs_measured']})")
    p.add_argument("--steps", type=int,
                   help=f"steps timed for the fixed-batch step rate (default {FULL['steps']})")
    p.add_argument("--warmup", type=int,
                   help=f"untimed steps before the step rate (default {FULL['warmup']})")
    p.add_argument("--quick", action="store_true",
                   help=f"tiny counts on a subset, for smoke tests: {QUICK}")
    p.add_argument("--skip-torch", action="store_true", help="measure the s7jax side only")
    p.add_argument("--tuned-torch", action=argparse.BooleanOptionalAction, default=None,
                   help="also time PyTorch's step channels-last and with torch.compile (its "
                        "compiles take tens of seconds; default: on, off with --quick)")
    p.add_argument("--out", help="result JSON (default results/bench-<cpu|gpu>.json)")
    add_data_flags(p)
    p.add_argument("--train-images", type=int, help="use only the first N training images")
    p.add_argument("--test-images", type=int, help="use only the first N test images")
    p.add_argument("--worker", choices=["s7jax", "pytorch"], help=argparse.SUPPRESS)
    p.add_argument("--worker-spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name, value in (QUICK if args.quick else FULL).items():
        if getattr(args, name) is None:  # flags given explicitly win over --quick
            setattr(args, name, value)
    if args.tuned_torch is None:
        args.tuned_torch = not args.quick
    if args.warmup < 0:
        p.error("--warmup must be >= 0")
    p.check_positive(args, "epochs_measured", "steps")
    return args


def run_worker(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its result comes back as JSON."""
    with tempfile.TemporaryDirectory(prefix="s7jax-bench-") as tmp:
        result_path = Path(tmp) / "result.json"
        spec = {**spec, "result": str(result_path)}
        cmd = [sys.executable, "-m", "tools.bench.against_pytorch", "--worker", name,
               "--worker-spec", json.dumps(spec)]
        t = time.perf_counter()
        # The worker imports this very s7jax, installed or from a checkout.
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [package_root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0 or not result_path.is_file():
            raise SystemExit(f"error: the {name} side of the bench failed (exit {proc.returncode})")
        result = json.loads(result_path.read_text())
        result["wall_s"] = time.perf_counter() - t
        return result


def torch_missing() -> str | None:
    for module in ("torch", "torchvision"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[bench]')"
    return None


def export_arrays(spec: dict[str, Any], path: Path) -> None:
    """The uint8 MNIST arrays of ``load_mnist`` for the PyTorch worker (which
    thus never imports TensorFlow)."""
    import numpy as np

    from s7jax import data

    splits = data.load_mnist(spec["data_dir"], spec["manual_dir"])
    tr, te = splits["train"].subset(spec["train_images"]), splits["test"].subset(spec["test_images"])
    np.savez(path, train_images=tr.images, train_labels=tr.labels,
             test_images=te.images, test_labels=te.labels)


def git_commit() -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def ratios(j: dict[str, Any], t: dict[str, Any] | None) -> dict[str, float]:
    """s7jax over PyTorch speed (>1: s7jax faster)."""
    if not t:
        return {}
    out = {"step": j["step_images_per_s"] / t["step_images_per_s"],
           "eval": j["eval"]["images_per_s"] / t["eval"]["images_per_s"]}
    for key in ("epoch_tfds", "epoch_tfds_grouped", "epoch_device", "epoch_scan"):
        if j.get(key):  # the tf.data epochs are absent where TensorFlow is
            out[key] = j[key]["images_per_s"] / t["epoch"]["images_per_s"]
    return {k: round(v, 3) for k, v in out.items()}


def worker_main(args: argparse.Namespace) -> int:
    """One side's measurements in this process (started by :func:`run_worker`),
    its result written where the spec says."""
    spec = json.loads(args.worker_spec)
    side = importlib.import_module(f"tools.bench.{args.worker}_side")
    Path(spec["result"]).write_text(json.dumps(side.run(spec)))
    return 0


def run(args: argparse.Namespace, argv: list[str]) -> int | None:
    """Both sides, each in its own process, then the table and the result."""
    if args.worker:  # this process is one of them
        return worker_main(args)
    from s7jax.runs.runfiles import package_versions
    from tools.bench.s7jax_side import EVAL_BATCH_SIZE
    from tools.bench.tables import text_table

    spec = {"batch_size": BATCH_SIZE, "steps": args.steps, "warmup": args.warmup,
            "epochs_measured": args.epochs_measured, "data_dir": args.data_dir,
            "manual_dir": args.manual_dir, "train_images": args.train_images,
            "test_images": args.test_images, "torch_workers": TORCH_WORKERS,
            "tuned_torch": args.tuned_torch,
            "torch_eval_batch_size": TORCH_EVAL_BATCH_SIZE}
    # This process leaves the devices to the workers: its record is without JAX's.
    result = {"command": shlex.join(["python", "scripts/bench.py", *argv]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "quick": args.quick, "git_commit": git_commit(),
              "machine": environment(with_jax=False),
              "versions": {"python": platform.python_version(), **package_versions(*PACKAGES)}}
    skipped = "--skip-torch" if args.skip_torch else torch_missing()

    log("s7jax side...")
    j = run_worker("s7jax", spec)
    t = None
    if skipped:
        log(f"PyTorch side skipped: {skipped}")
    else:
        with tempfile.TemporaryDirectory(prefix="s7jax-bench-") as tmp:
            arrays = Path(tmp) / "mnist.npz"
            export_arrays(spec, arrays)
            log("PyTorch side...")
            t = run_worker("pytorch", {**spec, "arrays": str(arrays)})

    result.update({
        # "backend" as every benchmark's result names it; "device", as the tables read it.
        "device": j["backend"], "backend": j["backend"],
        "settings": {**{k: v for k, v in spec.items() if k not in ("data_dir", "manual_dir")},
                     "eval_batch_size": EVAL_BATCH_SIZE,
                     # An s7jax epoch drops the last partial batch, the
                     # original DataLoader keeps it: rates are per image.
                     "train_images": j["train_images"], "test_images": j["eval"]["images"]},
        "s7jax": j, "pytorch": t, "pytorch_skipped": skipped, "ratios": ratios(j, t),
    })
    result["machine"]["loadavg_after"] = list(os.getloadavg())
    if j["backend"] != "cpu":
        result["machine"]["accelerator"] = f"{j['device_count']} x {j['device_kind']}"

    print()
    print(text_table(result))
    print()
    quick = Path(tempfile.gettempdir()) / f"bench-{j['backend']}-quick.json"
    write_result(result, args.out or (quick if args.quick else None), "bench")


if __name__ == "__main__":
    sys.exit(command(parse_args, run))
