"""s7jax as a user installs it: a wheel, in a fresh virtual environment,
used from a folder outside the checkout.

The wheel is built from this checkout and installed without its
dependencies into a new venv that sees this environment's packages through
a ``.pth`` file (so nothing is downloaded, and the checkout itself is not on
the path: a ``.pth`` file's directories are added, their own ``.pth`` files,
this checkout's editable install among them, are not read). The entry point
then trains a tiny model6 from a temporary folder, reading MNIST from the
files inside the installed package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "SHA256SUMS")

pytestmark = pytest.mark.slow


def run(cmd, **kwargs):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                            **kwargs)
    assert result.returncode == 0, f"{cmd}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_wheel_carries_mnist_and_the_commands(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry_points = next(z.read(n).decode() for n in names if n.endswith("entry_points.txt"))
    assert {f"s7jax/mnist_files/{f}" for f in MNIST_FILES} <= names
    assert "s7jax/cli/train.py" in names and not any(n.startswith("tests/") for n in names)
    assert {f"s7jax/data/{m}.py" for m in ("__init__", "files", "tfds", "host", "device")} <= names
    for command in ("s7jax-train", "s7jax-evaluate", "s7jax-sweep", "s7jax-reproduce"):
        assert f"{command} = s7jax.cli." in entry_points
    # The benchmarks and the docs' report stay beside the library, out of the wheel.
    assert not any(n.startswith("tools/") for n in names)
    assert "s7jax-bench" not in entry_points and "s7jax-report" not in entry_points


def test_an_installed_wheel_trains_from_any_folder(wheel, make_venv, tmp_path):
    venv = tmp_path / "venv"
    python = make_venv(venv)
    # Without PYTHONPATH: a checkout on it (with the egg-info a build leaves)
    # would count as s7jax installed already.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "S7JAX_MNIST_DIR")}
    run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps",
         wheel], env=env)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import s7jax, s7jax.data as d; print(s7jax.__file__); "
                 "print(d.default_manual_dir())"], cwd=elsewhere, env=env).stdout.split()
    assert all(Path(p).is_relative_to(venv) for p in where), where  # not the checkout's

    result = run([venv / "bin" / "s7jax-train", "--model", "model6", "--epochs", "1",
                  "--train-subset", "256", "--test-subset", "200", "--batch-size", "64",
                  "--precise-bn", "256", "--data-source", "idx", "--no-progress",
                  "--workdir", "run"], cwd=elsewhere, env=env)
    assert "MNIST from the IDX files in " + where[1] in result.stdout
    rows = [json.loads(line) for line in (elsewhere / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1] and 0 <= rows[0]["test_acc"] <= 100
    assert (elsewhere / "run" / "curves.png").is_file()
