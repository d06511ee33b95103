"""Several hosts as one: ``scripts/train.py --distributed``.

Two local processes, one CPU device each, form one JAX cluster on the
loopback address (``jax.distributed.initialize``, CPU collectives through
gloo), as two hosts of a pod would. They train model6 for two short epochs,
one compiled call per epoch, with each global batch split across the two
processes. The same run in one process over two devices must give the same
figures, and only process 0 writes the run's files.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from s7jax.runs import checkpoint, runfiles, weights

ROOT = Path(__file__).resolve().parent.parent
RUN = ["--epochs", "2", "--train-subset", "256", "--test-subset", "128", "--batch-size", "64",
       "--eval-batch-size", "64", "--precise-bn", "128", "--pipeline", "scan",
       "--data-source", "idx", "--no-progress"]

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(**extra: str) -> dict[str, str]:
    # No proxies (conftest's point at a closed port): the processes talk to
    # each other over 127.0.0.1 only.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def start(args: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "scripts" / "train.py"), *map(str, args)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def finish(procs: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    """Each process's output; all of them killed if one fails or hangs (a
    process whose peer died waits for it)."""
    try:
        outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    cluster = ["--distributed", "--coordinator-address", f"127.0.0.1:{free_port()}",
               "--num-processes", "2"]
    procs = [start([*RUN, *cluster, "--process-id", i, "--workdir", tmp / "two-processes"],
                   child_env()) for i in (0, 1)]
    procs.append(start([*RUN, "--workdir", tmp / "one-process"],
                       child_env(XLA_FLAGS="--xla_force_host_platform_device_count=2")))
    outputs = finish(procs)
    return tmp, outputs


def strip_seconds(rows):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_two_processes_form_one_mesh_over_both_devices(runs):
    _, (first, second, one) = runs
    for out in (first, second, one):
        assert "mesh {'data': 2} over 2 x cpu" in out, out[-2000:]
    assert "pipeline scan" in first and "pipeline scan" in second


def test_two_processes_train_what_one_process_trains(runs):
    """The same global program, split over processes instead of devices: the
    same learning rates and accuracies, the same losses up to float rounding
    (a test loss has been seen 2 ulp apart: the two layouts are compiled and
    scheduled apart, and their reductions may round differently)."""
    tmp, _ = runs
    two, one = (runfiles.read_metrics(tmp / name) for name in ("two-processes", "one-process"))
    assert [r["epoch"] for r in two] == [1, 2]  # not [1, 1, 2, 2]: one process wrote them
    losses = ("train_loss", "test_loss")
    exact = lambda rows: [{k: v for k, v in r.items() if k not in losses} for r in strip_seconds(rows)]  # noqa: E731
    assert exact(two) == exact(one)
    for a, b in zip(two, one):
        for key in losses:
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=0), (a["epoch"], key)


def test_only_process_0_writes_the_run_files(runs):
    tmp, (first, second, _) = runs
    workdir = tmp / "two-processes"
    assert runfiles.read_config(workdir).pipeline == "scan"
    assert (workdir / "curves.png").is_file()
    _, _, info = weights.load(runfiles.weights_path(workdir))  # process 0's copy, no barrier
    assert info["step"] == 8
    assert checkpoint.all_steps(runfiles.checkpoint_dir(workdir)) == [4, 8]
    assert f"wrote {runfiles.metrics_path(workdir)}" in first
    assert "process 1 of 2: process 0 writes the run's files" in second
    assert f"wrote {runfiles.metrics_path(workdir)}" not in second
