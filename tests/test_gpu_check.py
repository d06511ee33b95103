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

from s7jax.runs import runfiles

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def imports(modules: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {modules}"],
                          capture_output=True).returncode == 0


def test_dry_run_runs_every_step_and_writes_the_summary(tmp_path):
    """The rehearsal: every step of the GPU run, its tests included, with
    TensorFlow blocked and the runs on --pipeline scan, within its limits."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--out", str(out),
                           "--dry-run"], capture_output=True, text=True, timeout=1700,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    summary = json.loads((out / "results" / "gpu" / "gpu_check.json").read_text())
    steps = {s["step"]: s for s in summary["steps"]}
    assert list(steps) == ["device", "tests", "bench", "model6", "model1", "seeds", "strategies",
                           "referee"]
    # Without a working PyTorch the comparisons fail rather than pass half done.
    needs = {"bench": "torch and torchvision", "referee": "torch"}
    torch_steps = {name for name, what in needs.items()
                   if not imports(what.replace(" and ", ", "))}
    for name, step in steps.items():
        if name in torch_steps:
            assert step["status"] == f"failed ({needs[name]} must import)", step
        else:
            assert step["status"] == "ok", (name, step["status"], proc.stdout[-4000:])
    assert proc.returncode == (1 if torch_steps else 0)
    # The tests ran with TensorFlow unimportable, as on the GPU machine (the
    # tests of TFDS itself skip or are left out as slow): nothing failed.
    tests_log = (out / "logs" / "tests.log").read_text()
    assert " passed" in tests_log and " failed" not in tests_log and " error" not in tests_log
    for model in ("model6", "model1"):
        run = out / "results" / "gpu" / f"{model}-seed-0"
        assert len(runfiles.read_metrics(run)) == 1
        config = runfiles.read_config(run)
        assert (config.data_source, config.pipeline) == ("idx", "scan")
        assert steps[model]["run"]["compile_s"] > 0  # the epoch program's compile, recorded
    seeds = json.loads((out / "results" / "gpu-seeds" / "summary.json").read_text())
    assert seeds["models"]["model6"]["n_seeds"] == 2
    strategies = json.loads((out / "results" / "seeds-gpu.json").read_text())
    assert {(r["seeds"], r["strategy"]) for r in strategies["together"]} == {
        (2, s) for s in ("vmap", "map", "sequential")}
    assert not list((out / "results").rglob("checkpoints"))  # one call's output comes back whole
    if "bench" not in torch_steps:
        assert json.loads((out / "results" / "bench-gpu.json").read_text())["s7jax"]["epoch_scan"]
    if "referee" not in torch_steps:  # the dry run's referee trains model2 for one short epoch
        assert len(runfiles.read_metrics(out / "results" / "model2" / "torch-seed-0")) == 1
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
    summary = json.loads((out / "results" / "gpu" / "gpu_check.json").read_text())
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    assert steps == {"device": "ok", "model6": "failed (exit 2)"}


def load_gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead; only its parent (here: init) has yet to reap it.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("leader_exits", [False, True])
def test_a_step_is_killed_with_everything_it_started(tmp_path, leader_exits):
    """On timeout, and after a step that exits leaving a worker behind, no
    process of the step survives (on a GPU it would hold its memory)."""
    gpu_check = load_gpu_check()
    pid_file = tmp_path / "worker.pid"
    code = ("import subprocess, sys, time; "
            "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)']); "
            f"open({str(pid_file)!r}, 'w').write(str(w.pid)); "
            + ("" if leader_exits else "time.sleep(300)"))
    logs = tmp_path / "logs"
    logs.mkdir()
    record = gpu_check.run_step("stuck", [sys.executable, "-c", code], 3, logs)
    assert record["status"] == ("ok" if leader_exits else "timed out after 3 s")
    assert record["seconds"] < 30
    assert not alive(int(pid_file.read_text()))


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
