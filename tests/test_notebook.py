"""notebooks/colab_tpu.ipynb: committed clean, and it runs end to end.

The run executes the notebook on the CPU with a tiny configuration (1 epoch,
512 training and 256 test images) as a user with a wheel would: the wheel
built from this checkout lies in the notebook's folder as an upload leaves
it, and the install cell installs it into a fresh virtual environment (which
sees this one's packages, so pip downloads nothing), in whose kernel the rest
runs; MNIST comes from the session's prepared TFDS directory. Everything
goes through the environment variables of its parameters cell.
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


def install_cell():
    (cell,) = [c for c in read_notebook().cells if c.get("id") == "install"]
    return cell.source


def run_install_cell(monkeypatch, **parameters):
    """The install cell, run with pip recorded instead of executed."""
    import os
    import subprocess

    commands = []
    monkeypatch.setattr(subprocess, "run", lambda cmd, check: commands.append(cmd))
    namespace = {"os": os, "SKIP_INSTALL": False, "REPO_URL": "", "WHEEL": "", **parameters}
    exec(install_cell(), namespace)
    return commands, namespace


@pytest.mark.parametrize("kind", ["tpu", "gpu", "cpu"])
@pytest.mark.parametrize("source", ["repository", "wheel"])
def test_install_cell_installs_the_jax_side_and_s7jax_without_dependencies(kind, source,
                                                                           monkeypatch):
    """On every runtime: JAX for its accelerator and JAX's side of s7jax, then
    s7jax alone, so no TensorFlow comes with it (a Colab runtime has its own,
    a TPU runtime none)."""
    monkeypatch.setenv("S7JAX_NOTEBOOK_ACCELERATOR", kind)
    given = ({"REPO_URL": "https://example.invalid/s7jax"} if source == "repository"
             else {"WHEEL": "/content/s7jax-0.1.0-py3-none-any.whl"})
    commands, _ = run_install_cell(monkeypatch, **given)
    package = ("s7jax @ git+https://example.invalid/s7jax" if source == "repository"
               else "/content/s7jax-0.1.0-py3-none-any.whl")
    assert all(cmd[1:4] == ["-m", "pip", "install"] for cmd in commands)  # no clone
    assert len(commands) == 2 and commands[1][-2:] == ["--no-deps", package]
    jax = {"tpu": "jax[tpu]>=0.7", "gpu": "jax[cuda12]>=0.7", "cpu": "jax>=0.7"}[kind]
    assert jax in commands[0] and "flax" in commands[0]
    assert not any("tensorflow" in arg for cmd in commands for arg in cmd)


def test_install_cell_without_a_source_says_what_to_do(monkeypatch):
    with pytest.raises(RuntimeError) as err:
        run_install_cell(monkeypatch)
    assert type(err.value).__name__ == "NoS7jaxToInstall"
    message = str(err.value)
    assert "REPO_URL" in message and "pip wheel --no-deps . -w dist" in message
    assert "upload" in message


def test_the_runtime_is_told_by_its_devices_not_by_its_packages(monkeypatch):
    import glob
    import shutil

    for name in ("S7JAX_NOTEBOOK_ACCELERATOR", "COLAB_TPU_ADDR", "TPU_ACCELERATOR_TYPE",
                 "TPU_NAME", "COLAB_GPU"):
        monkeypatch.delenv(name, raising=False)
    devices = []
    monkeypatch.setattr(glob, "glob", lambda pattern: [p for p in devices if p.startswith(
        pattern.split("[")[0])])
    monkeypatch.setattr(shutil, "which", lambda name: None)
    _, namespace = run_install_cell(monkeypatch, SKIP_INSTALL=True)
    accelerator = namespace["accelerator"]
    assert accelerator() == "cpu"  # libtpu may well be installed here: it does not count
    devices.append("/dev/nvidia0")
    assert accelerator() == "gpu"
    devices[:] = ["/dev/accel0"]
    assert accelerator() == "tpu"
    devices.clear()
    monkeypatch.setenv("TPU_ACCELERATOR_TYPE", "v2-8")  # a Colab TPU VM
    assert accelerator() == "tpu"


@pytest.fixture(scope="module")
def executed(tfds_dir, wheel, make_venv, tmp_path_factory):
    """The notebook run in a kernel of a fresh virtual environment, installing
    s7jax from its wheel, "uploaded" into the notebook's folder."""
    import json
    import shutil

    workdir = tmp_path_factory.mktemp("notebook")
    shutil.copy(wheel, workdir)  # where Colab's upload leaves it
    venv = workdir.parent / f"{workdir.name}-venv"
    python = make_venv(venv)
    kernels = workdir.parent / f"{workdir.name}-jupyter"
    (kernels / "kernels" / "s7jax-wheel").mkdir(parents=True)
    (kernels / "kernels" / "s7jax-wheel" / "kernel.json").write_text(json.dumps({
        "argv": [str(python), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "s7jax from its wheel", "language": "python"}))
    env = {
        "S7JAX_NOTEBOOK_ACCELERATOR": "cpu",
        "S7JAX_NOTEBOOK_EPOCHS": "1",
        "S7JAX_NOTEBOOK_TRAIN_SUBSET": "512",
        "S7JAX_NOTEBOOK_TEST_SUBSET": str(TEST_SUBSET),
        "TFDS_DATA_DIR": str(tfds_dir),  # TFDS's default data_dir: MNIST already prepared
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",  # as conftest: fast compiles
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "JUPYTER_PATH": str(kernels),
        "PIP_NO_INDEX": "1",  # everything but s7jax is installed already
        "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    }
    # The kernel inherits this process's environment (conftest's dead proxies
    # included, so nothing reaches the network), less anything that would put
    # the checkout on its path.
    with pytest.MonkeyPatch.context() as mp:
        for name, value in env.items():
            mp.setenv(name, value)
        for name in ("XLA_FLAGS", "PYTHONPATH", "S7JAX_NOTEBOOK_SKIP_INSTALL",
                     "S7JAX_NOTEBOOK_REPO", "S7JAX_NOTEBOOK_WHEEL"):
            mp.delenv(name, raising=False)
        nb = read_notebook()
        client = nbclient.NotebookClient(nb, kernel_name="s7jax-wheel", timeout=600,
                                         resources={"metadata": {"path": str(workdir)}})
        client.execute()  # raises CellExecutionError, with the cell's traceback, on failure
    return nb, workdir, venv


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
def test_notebook_installs_the_uploaded_wheel_and_runs_on_cpu(executed, wheel):
    nb, workdir, venv = executed
    assert f"installing s7jax from the uploaded wheel {wheel.name}" in text_of(nb, "upload")
    assert "cpu runtime: installing jax>=0.7" in text_of(nb, "install")
    devices = text_of(nb, "devices")
    where = re.search(r"^s7jax \S+ from (.+)$", devices, re.M)[1]
    assert Path(where).is_relative_to(venv), where  # the wheel's, not the checkout's
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
    nb, _, _ = executed
    gallery = text_of(nb, "gallery")
    match = re.search(rf"(\d+) misclassified of {TEST_SUBSET} test images: ([\d.]+)% accuracy "
                      r"\(the last epoch's evaluation: ([\d.]+)%\)", gallery)
    assert match, gallery
    wrong, restored, logged = int(match[1]), match[2], match[3]
    assert restored == f"{100 * (1 - wrong / TEST_SUBSET):.2f}"
    assert restored == logged
