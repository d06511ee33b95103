"""The ``tfds`` source: TFDS's ``mnist`` prepared offline from the official
files (manual download, no network), read back as one ``Split`` per split.
TensorFlow loads only after the files have passed their checks."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import sys
from pathlib import Path

import numpy as np

from s7jax.data.files import IDX_SPLITS, Split, default_manual_dir, read_idx
from s7jax.errors import DataError
from s7jax.data.tf_cpu import tensorflow

TFDS_MNIST_VERSION = "3.0.1"


def tfds_installed() -> bool:  # without importing them: TensorFlow takes seconds to start
    return all(importlib.util.find_spec(m) for m in ("tensorflow", "tensorflow_datasets"))


def tfds_available() -> bool:
    if not tfds_installed():
        return False
    try:
        tensorflow()
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


def _tfds_prepared_dir(data_dir) -> Path:
    """Where TFDS keeps the prepared ``mnist``, found without TensorFlow."""
    root = data_dir or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets"
    return Path(root) / "mnist" / TFDS_MNIST_VERSION


def check_files(source: str = "auto", data_dir=None, manual_dir=None) -> None:
    """Check the official files before anything loads TensorFlow, where TFDS
    still has to prepare them, so that a data error is one line and comes at
    once (the ``idx`` source checks them as it reads them)."""
    prepared = (_tfds_prepared_dir(data_dir) / "dataset_info.json").is_file()
    if source != "idx" and tfds_installed() and not prepared:
        read_idx(manual_dir)


def _mnist_builder(data_dir):
    tensorflow()  # TF configured (accelerators hidden, banner filtered) before TFDS imports it
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)  # TFDS's warnings are not the user's errors
    return tfds.builder("mnist", data_dir=None if data_dir is None else str(data_dir))


@contextlib.contextmanager
def _preparing(data_dir):
    """Take turns preparing TFDS's mnist in ``data_dir``: TFDS renames a
    temporary folder, so two processes at once collide ("Cannot rename ...
    already exists")."""
    root = _tfds_prepared_dir(data_dir).parent.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(root / ".s7jax-mnist.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"cannot prepare TFDS mnist in {root}: {e.strerror or e}; "
                        "pass another --data-dir") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process preparing TFDS mnist in {root}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_mnist(data_dir=None, manual_dir=None, rebuild: bool = False):
    """TFDS's ``mnist`` builder, prepared offline from the official files if
    needed (or ``rebuild``), the files checked before TensorFlow loads."""
    manual_dir = Path(manual_dir) if manual_dir is not None else default_manual_dir()
    if rebuild or not (_tfds_prepared_dir(data_dir) / "dataset_info.json").is_file():
        read_idx(manual_dir)  # every check, in a fraction of a second, without TensorFlow
    try:
        builder = _mnist_builder(data_dir)
        if builder.is_prepared() and not rebuild:
            return builder
    except Exception as e:  # noqa: BLE001  (a damaged dataset_info.json: protobuf's ParseError)
        _rebuilding(_tfds_prepared_dir(data_dir), e)
        read_idx(manual_dir)
        rebuild = True
    import tensorflow_datasets as tfds

    with _preparing(data_dir):
        if rebuild:
            shutil.rmtree(_tfds_prepared_dir(data_dir), ignore_errors=True)
        builder = _mnist_builder(data_dir)  # afresh: another process may have prepared it
        if not builder.is_prepared():
            print(f"preparing TFDS mnist in {builder.data_dir} from {manual_dir} (once)",
                  file=sys.stderr)
            config = tfds.download.DownloadConfig(manual_dir=str(manual_dir),
                                                  try_download_gcs=False)
            tfds.disable_progress_bar()  # a dozen nested bars for a 20-second job
            builder.download_and_prepare(download_config=config)
    return builder


def _read_tfds(builder) -> dict[str, "Split"]:
    splits = {}
    for name in ("train", "test"):
        arrays = builder.as_dataset(split=name, batch_size=-1, shuffle_files=False)
        splits[name] = Split(
            images=arrays["image"].numpy().astype(np.uint8),
            labels=arrays["label"].numpy().astype(np.int32),
        )
        if len(splits[name]) != IDX_SPLITS[name][2]:
            raise DataError(f"{len(splits[name])} {name} examples, expected {IDX_SPLITS[name][2]}")
    return splits


def _rebuilding(folder, e: Exception) -> None:
    reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
    print(f"the prepared TFDS mnist in {folder} cannot be read ({reason}); "
          "rebuilding it from the official files", file=sys.stderr)


def load_tfds(data_dir=None, manual_dir=None) -> dict[str, Split]:
    """``{"train": Split, "test": Split}`` through TFDS; a prepared folder
    that cannot be read is rebuilt once, and the run says so."""
    builder = prepare_mnist(data_dir, manual_dir)
    try:
        return _read_tfds(builder)
    except Exception as e:  # noqa: BLE001  (tf.errors.DataLossError and kin, or a short split)
        _rebuilding(builder.data_dir, e)
    builder = prepare_mnist(data_dir, manual_dir, rebuild=True)
    try:
        return _read_tfds(builder)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"the TFDS mnist rebuilt in {builder.data_dir} cannot be read either "
                        f"({type(e).__name__}); delete that folder and check --manual-dir") from None
