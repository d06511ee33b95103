"""Shared test set-up: fast compiles, no network, MNIST prepared once."""

from __future__ import annotations

import os

# Proxies pointing at a closed port: anything that tries the network fails
# at once instead of hanging. Set before TFDS or TF is imported.
for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[var] = "http://127.0.0.1:9"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# S7JAX_BLOCK_TENSORFLOW=1: TensorFlow and TFDS unimportable, here and in every
# process the tests start, as on the GPU machine or a TPU runtime (.ci/run
# runs the part of the suite that covers every pipeline and program so).
if os.environ.get("S7JAX_BLOCK_TENSORFLOW") == "1":
    import sys
    from pathlib import Path

    _blocker = Path(__file__).resolve().parent / "no_tensorflow"
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(_blocker), os.environ.get("PYTHONPATH")) if p)
    for _name in ("tensorflow", "tensorflow_datasets"):  # and in this one, as it does
        sys.modules[_name] = None

import jax  # noqa: E402
import pytest  # noqa: E402

# The tests check properties, not speed: skip XLA's slow optimisation passes,
# here and in every script the tests start (they inherit the environment).
jax.config.update("jax_disable_most_optimizations", True)
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"

# Compiled programs persist between test runs, and between the scripts the
# tests start (s7jax.training.compile_cache: ~/.cache/s7jax/jax unless overridden).
from s7jax.training import compile_cache  # noqa: E402

compile_cache.enable()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (full data, training in subprocesses, "
                          "the notebook, the wheel); CI does")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` are left out unless ``--runslow`` (or a ``-m``
    that names them) asks for them, so that ``pytest -q`` is quick.

    Tests of TensorFlow or TFDS themselves (tf.data, TFDS's preparation, TF
    against JAX) are marked ``tfds`` and skipped where they do not import (the
    GPU machine, a TPU runtime): ``pytest -m "not tfds"`` selects the rest.
    Every other test runs there too, on the IDX files."""
    from s7jax.data import tfds_available

    if not config.getoption("--runslow") and "slow" not in (config.getoption("-m") or ""):
        slow = [item for item in items if "slow" in item.keywords]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if "slow" not in item.keywords]

    if not tfds_available():
        skip = pytest.mark.skip(reason="needs tensorflow and tensorflow-datasets")
        for item in items:
            if "tfds" in item.keywords:
                item.add_marker(skip)


@pytest.fixture
def xla_optimized(monkeypatch):
    """XLA's optimisations on, as in every run, here and in the processes the
    test starts: for tests of numbers that fusion could change."""
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "false")
    jax.config.update("jax_disable_most_optimizations", False)
    yield
    jax.config.update("jax_disable_most_optimizations", True)


@pytest.fixture
def in_process(capsys, monkeypatch):
    """``in_process(command, *args) -> CompletedProcess``: ``scripts/<command>.py``'s
    ``main`` run in this process, for refusals that come before any data or
    program (a fresh interpreter costs ~2 s; the tests that need one, for
    what the process writes to its file descriptors, start one)."""
    import importlib
    import signal
    import subprocess
    import sys

    def run(command, *args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # put back afterwards
        main = importlib.import_module(f"s7jax.cli.{command}").main
        sigterm, sigint = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
        capsys.readouterr()
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        finally:
            signal.signal(signal.SIGTERM, sigterm)
            signal.signal(signal.SIGINT, sigint)
            from s7jax.errors import SIGNALLED

            SIGNALLED["set"] = False  # a signal of this command does not stop the next test's run
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess([command, *args], code or 0, out, err)

    return run


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data_dir with MNIST prepared offline from the repository's files.
    Where TFDS does not import, an empty folder that nothing reads: the
    ``auto`` data source then takes the IDX files, so the tests that pass it
    on (to ``train_and_evaluate``, as ``--data-dir``) run on them unchanged."""
    from s7jax import data

    path = tmp_path_factory.mktemp("tfds")
    if data.tfds_available():
        data.prepare_mnist(data_dir=path)
    return path


@pytest.fixture(scope="session")
def mnist(tfds_dir):
    """Both splits, through TFDS where it imports, else from the IDX files."""
    from s7jax import data

    return data.load_mnist(data_dir=tfds_dir)


@pytest.fixture
def highest_precision():
    """Full float32 matmuls and convolutions, for tests that compare at float32
    tolerances: on a GPU (TF32) or a TPU (bfloat16 passes) JAX's default
    precision rounds far more coarsely (runs pin it with ``--matmul-precision
    highest``, ``Config.matmul_precision``)."""
    with jax.default_matmul_precision("highest"):
        yield


@pytest.fixture(scope="session")
def wheel(tmp_path_factory):
    """s7jax's wheel, built from this checkout without downloading anything."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path_factory.mktemp("wheel")
    # setuptools builds in the checkout's build/ (ignored by git): start it
    # empty, so that no module deleted since an earlier build slips in.
    shutil.rmtree(root / "build", ignore_errors=True)
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                               "--no-build-isolation", "-w", str(out), str(root)],
                              capture_output=True, text=True, timeout=600)
    finally:
        shutil.rmtree(root / "build", ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = out.glob("s7jax-*.whl")
    return path


@pytest.fixture(scope="session")
def make_venv():
    """``make_venv(path) -> python``: a new virtual environment that sees this
    environment's packages through a ``.pth`` file, so that nothing is
    downloaded and the checkout itself is not on its path (a ``.pth`` file's
    directories are added, their own ``.pth`` files, this checkout's editable
    install among them, are not read)."""
    import site
    import subprocess
    import sys
    import sysconfig
    from pathlib import Path

    def make(venv):
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = Path(venv) / "bin" / "python"
        purelib = Path(subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True).stdout.strip())
        ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                *site.getsitepackages()}
        (purelib / "outer-environment.pth").write_text("\n".join(sorted(ours)) + "\n")
        return python

    return make
