"""notebooks/colab_tpu.ipynb: committed clean, and it runs end to end.

The run executes the notebook in a fresh kernel on the CPU with a tiny
configuration (1 epoch, 512 training and 256 test images), the install
skipped and MNIST read from the session's prepared TFDS directory, all through
the environment variables of its parameters cell.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "colab_tpu.ipynb"
TEST_SUBSET = 256


def read_notebook():
    return nbformat.read(NOTEBOOK, as_version=4)


def test_notebook_is_committed_without_outputs():
    nb = read_notebook()
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("tpu", [True, False])
def test_install_cell_brings_no_tensorflow_to_a_tpu_runtime(tpu, tmp_path, monkeypatch):
    """The install cell, run with pip recorded instead of executed: the package
    from its repository in one pip line, with its dependencies (TFDS included);
    on a TPU runtime (libtpu importable) without them, beside its JAX side, and
    no command names TensorFlow."""
    import importlib.util
    import subprocess

    (install,) = [c for c in read_notebook().cells if c.get("id") == "install"]
    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: commands.append(cmd))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: (
        (object() if tpu else None) if name == "libtpu" else real_find_spec(name, *a)))
    monkeypatch.chdir(tmp_path)
    exec(install.source, {"SKIP_INSTALL": False, "REPO_URL": "https://example.invalid/s7jax"})
    package = "s7jax @ git+https://example.invalid/s7jax"
    assert all(cmd[1:4] == ["-m", "pip", "install"] for cmd in commands)  # no clone
    if tpu:
        assert not any("tensorflow" in arg for cmd in commands for arg in cmd)
        assert any("jax[tpu]" in arg for arg in commands[0])
        assert commands[1][-2:] == ["--no-deps", package]
    else:
        assert commands == [[*commands[0][:5], package]]  # one line, with its dependencies


@pytest.fixture(scope="module")
def executed(tfds_dir, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("notebook")
    env = {
        "S7JAX_NOTEBOOK_SKIP_INSTALL": "1",
        "S7JAX_NOTEBOOK_EPOCHS": "1",
        "S7JAX_NOTEBOOK_TRAIN_SUBSET": "512",
        "S7JAX_NOTEBOOK_TEST_SUBSET": str(TEST_SUBSET),
        "TFDS_DATA_DIR": str(tfds_dir),  # TFDS's default data_dir: MNIST already prepared
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",  # as conftest: fast compiles
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    # The kernel inherits this process's environment (conftest's dead proxies
    # included, so nothing reaches the network).
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        mp.delenv("XLA_FLAGS", raising=False)
        nb = read_notebook()
        # "python3" resolves to this interpreter: a kernelspec whose argv is
        # "python" is run with sys.executable, and ipykernel's built-in spec is
        # the fallback when none is registered.
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                         resources={"metadata": {"path": str(workdir)}})
        client.execute()  # raises CellExecutionError, with the cell's traceback, on failure
    return nb, workdir


def outputs_of(nb, cell_id):
    (cell,) = [c for c in nb.cells if c.get("id") == cell_id]
    return cell.outputs


def text_of(nb, cell_id):
    """The cell's stdout and text results (the progress bars go to stderr)."""
    parts = []
    for out in outputs_of(nb, cell_id):
        if out.output_type == "stream" and out.name == "stdout":
            parts.append(out.text)
        elif "data" in out and "text/plain" in out.data:
            parts.append(out.data["text/plain"])
    return "".join(parts)


def images_of(nb, cell_id):
    return [o for o in outputs_of(nb, cell_id) if "data" in o and "image/png" in o.data]


@pytest.mark.slow
def test_notebook_runs_on_cpu(executed):
    nb, workdir = executed
    assert "install skipped" in text_of(nb, "install")
    devices = text_of(nb, "devices")
    assert "backend cpu" in devices and "mesh {'data': 1} over 1 x cpu" in devices
    config = text_of(nb, "config")
    assert '"epochs": 1' in config and '"train_subset": 512' in config

    log = text_of(nb, "train")
    assert re.search(r"epoch\s+lr\s+train loss\s+train acc\s+test loss\s+test acc", log), log
    assert re.search(r"^\s+1\s+\S+e-\d\d\s", log, re.M), log  # the epoch-1 row
    assert "best test acc" in log
    (run,) = (workdir / "runs").iterdir()
    assert (run / "metrics.jsonl").read_text().count("\n") == 1

    assert len(images_of(nb, "curves")) == 1 and (run / "curves.png").is_file()
    assert len(images_of(nb, "gallery")) == 1 and (run / "misclassified.png").is_file()


@pytest.mark.slow
def test_restored_checkpoint_reproduces_the_last_evaluation(executed):
    nb, _ = executed
    gallery = text_of(nb, "gallery")
    match = re.search(rf"(\d+) misclassified of {TEST_SUBSET} test images: ([\d.]+)% accuracy "
                      r"\(the last epoch's evaluation: ([\d.]+)%\)", gallery)
    assert match, gallery
    wrong, restored, logged = int(match[1]), match[2], match[3]
    assert restored == f"{100 * (1 - wrong / TEST_SUBSET):.2f}"
    assert restored == logged
