"""scripts/gpu_check.py, dry-run on the CPU so that it cannot rot before a GPU
machine runs it, and the device path with TensorFlow unimportable."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s7jax import runfiles

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def test_dry_run_runs_every_step_and_writes_the_summary(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out),
                           "--dry-run"], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = json.loads((out / "gpu_check.json").read_text())
    assert [s["step"] for s in summary["steps"]] == ["device", "tests", "bench", "model6", "model1",
                                                     "seeds", "referee"]
    have_torch = importlib.util.find_spec("torch") is not None
    assert all(s["status"] == ("skipped (no torch)" if s["step"] == "referee" and not have_torch
                               else "ok") for s in summary["steps"])
    if have_torch:  # the dry run's referee trains model2 for one short epoch
        assert len(runfiles.read_metrics(out / "results" / "model2" / "torch-seed-0")) == 1
    assert json.loads((out / "results" / "bench-gpu.json").read_text())["s7jax"]["epoch_scan"]
    for model in ("model6", "model1"):
        run = out / "results" / "gpu" / f"{model}-seed-0"
        assert len(runfiles.read_metrics(run)) == 1
        assert runfiles.read_config(run).data_source == "idx"
    summary = json.loads((out / "results" / "gpu-seeds" / "summary.json").read_text())
    assert summary["models"]["model6"]["n_seeds"] == 2
    assert "step     status" in proc.stdout and "last-3 test acc" in proc.stdout
    assert "model6 (default recipe): last-3 mean" in proc.stdout


def test_a_step_that_fails_is_reported_and_the_others_still_run(tmp_path):
    out = tmp_path / "out"
    (out / "results" / "gpu").mkdir(parents=True)
    (out / "results" / "gpu" / "model6-seed-0").write_text("a file where the run's folder goes")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out),
                           "--dry-run", "--only", "device", "model6"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 1
    steps = {s["step"]: s["status"] for s in json.loads((out / "gpu_check.json").read_text())["steps"]}
    assert steps["device"] == "ok" and steps["model6"].startswith("failed")


NO_TENSORFLOW = """
import atexit, runpy, sys
sys.modules["tensorflow"] = None          # `import tensorflow` now raises ImportError
sys.modules["tensorflow_datasets"] = None
def imported():
    loaded = sorted(m for m, v in sys.modules.items() if m.startswith("tensorflow") and v is not None)
    print("TENSORFLOW MODULES LOADED:", loaded)
atexit.register(imported)
sys.argv = ["train.py", *sys.argv[1:]]
runpy.run_path({script!r}, run_name="__main__")
"""


def test_device_pipeline_trains_without_tensorflow(tmp_path):
    """Where TensorFlow cannot be imported (a Colab TPU runtime, the GPU
    machine), MNIST comes from the IDX files and nothing imports TensorFlow."""
    workdir = tmp_path / "run"
    code = NO_TENSORFLOW.format(script=str(ROOT / "scripts" / "train.py"))
    proc = subprocess.run([sys.executable, "-c", code, "--pipeline", "device", "--epochs", "1",
                           "--train-subset", "512", "--test-subset", "256", "--batch-size", "64",
                           "--eval-batch-size", "128", "--precise-bn", "256", "--no-progress",
                           "--workdir", str(workdir)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MNIST from the IDX files" in proc.stdout
    assert "TENSORFLOW MODULES LOADED: []" in proc.stdout
    config = runfiles.read_config(workdir)
    assert (config.data_source, config.pipeline) == ("idx", "device")
    assert len(runfiles.read_metrics(workdir)) == 1 and (workdir / "curves.png").is_file()
