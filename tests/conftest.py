"""Shared test set-up: fast compiles, no network, MNIST prepared once."""

from __future__ import annotations

import os

# Proxies pointing at a closed port: anything that tries the network fails
# at once instead of hanging. Set before TFDS or TF is imported.
for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
    os.environ[var] = "http://127.0.0.1:9"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

# The tests check properties, not speed: skip XLA's slow optimisation passes,
# here and in every script the tests start (they inherit the environment).
jax.config.update("jax_disable_most_optimizations", True)
os.environ["JAX_DISABLE_MOST_OPTIMIZATIONS"] = "true"

# Compiled programs persist between test runs, and between the scripts the
# tests start (s7jax.compile_cache: ~/.cache/s7jax/jax unless overridden).
from s7jax import compile_cache  # noqa: E402

compile_cache.enable()


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true",
                     help="also run the tests marked slow (full data, training in subprocesses, "
                          "the notebook, the wheel); CI does")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` are left out unless ``--runslow`` (or a ``-m``
    that names them) asks for them, so that ``pytest -q`` is quick.

    Tests that need TFDS (through the ``tfds_dir`` fixture, or marked) are
    marked ``tfds``, and skipped where TensorFlow or TFDS does not import (the
    GPU machine, a TPU runtime): ``pytest -m "not tfds"`` selects the rest."""
    from s7jax.data import tfds_available

    if not config.getoption("--runslow") and "slow" not in (config.getoption("-m") or ""):
        slow = [item for item in items if "slow" in item.keywords]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if "slow" not in item.keywords]

    for item in items:
        if "tfds_dir" in item.fixturenames:
            item.add_marker(pytest.mark.tfds)
    if not tfds_available():
        skip = pytest.mark.skip(reason="needs tensorflow and tensorflow-datasets")
        for item in items:
            if "tfds" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
    """A TFDS data_dir with MNIST prepared offline from the repository's files."""
    from s7jax import data

    path = tmp_path_factory.mktemp("tfds")
    data.prepare_mnist(data_dir=path)
    return path


@pytest.fixture(scope="session")
def mnist(tfds_dir):
    from s7jax import data

    return data.load_mnist(data_dir=tfds_dir)
