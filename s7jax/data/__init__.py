"""MNIST from its four official files, and the input pipelines.

The modules, in the order the data flows through them:

* :mod:`~s7jax.data.files`   the four official files: their SHA-256 check, their
  IDX contents read with numpy (:func:`read_idx`), :class:`Split`;
* :mod:`~s7jax.data.tfds`    TFDS's ``mnist`` prepared offline from those files,
  and read back (:func:`prepare_mnist`);
* here, :func:`load_mnist`   both splits from the source :func:`resolve_source`
  picks;
* :mod:`~s7jax.data.host`    normalisation, the tf.data training pipeline
  (:func:`train_dataset`) and the evaluation batches (:func:`eval_batches`);
* :mod:`~s7jax.data.device`  :class:`DeviceTrainData`, the training batches made
  on the accelerator.

Two sources give the same 70,000 images (tested as matched sets; each keeps
its own order):

* TensorFlow Datasets' ``mnist``, prepared offline on first use (in TFDS's own
  ``data_dir``, which honours ``TFDS_DATA_DIR``) from the official files that
  ship inside the package (``s7jax/mnist_files/``), through TFDS's manual-download
  mechanism, so no network is needed. The default wherever TFDS is installed.
* The same files read with numpy (:func:`read_idx`), where TensorFlow is not
  installed: a Colab TPU runtime or a GPU machine without it.

Either way the files are checked against ``SHA256SUMS`` first: given a missing
file, TFDS would try to download it and take minutes to fail.

Three pipelines feed training, each a pure function of (seed, step), so the
same seed gives the same batches and a run resumed at any step sees exactly
the batches the uninterrupted run would have seen:

* :func:`train_dataset`: tf.data on the host (TensorFlow's stateless random
  ops keyed on the seed, epoch and step);
* :class:`DeviceTrainData`: the split resident on the accelerator, batched
  and augmented there in JAX, one jitted call per batch
  (:meth:`~DeviceTrainData.batches`) or folded into a compiled epoch
  (:meth:`~DeviceTrainData.scan`), with the same batches;
* evaluation batches (:func:`eval_batches`) are plain numpy on every path.

Every name callers use is re-exported here: ``from s7jax import data`` and
``data.load_mnist``, ``data.DeviceTrainData`` and so on. None of the modules
imports TensorFlow until a function of the ``tfds`` source or the tf.data
pipeline is called.
"""

from __future__ import annotations

from s7jax.data.device import DeviceTrainData
from s7jax.data.files import (
    IDX_SPLITS,
    IMAGES_MAGIC,
    LABELS_MAGIC,
    MNIST_FILES,
    Split,
    default_manual_dir,
    read_idx,
    verify_mnist_files,
)
from s7jax.data.host import (
    MEAN,
    STD,
    as_numpy,
    eval_batches,
    normalize,
    steps_per_epoch,
    train_dataset,
)
from s7jax.data.tfds import (
    TFDS_MNIST_VERSION,
    check_files,
    load_tfds,
    prepare_mnist,
    tfds_available,
)
from s7jax.errors import ConfigError

__all__ = [
    "IDX_SPLITS", "IMAGES_MAGIC", "LABELS_MAGIC", "MEAN", "MNIST_FILES", "STD",
    "TFDS_MNIST_VERSION", "DeviceTrainData", "Split", "as_numpy", "check_files",
    "default_manual_dir", "eval_batches", "load_mnist", "load_tfds", "normalize",
    "prepare_mnist", "read_idx", "resolve_source", "steps_per_epoch", "tfds_available",
    "train_dataset", "verify_mnist_files",
]


def resolve_source(source: str) -> str:
    """``tfds`` or ``idx`` for ``source`` (``auto``: TFDS where it imports)."""
    if source == "auto":
        return "tfds" if tfds_available() else "idx"
    if source == "tfds" and not tfds_available():
        raise ConfigError("--data-source tfds needs tensorflow and tensorflow-datasets, which do "
                          "not import here; use --data-source idx")
    return source


def load_mnist(data_dir=None, manual_dir=None, source: str = "auto") -> dict[str, Split]:
    """``{"train": Split, "test": Split}`` in host memory (47 MB + 8 MB: small
    enough to hold, which makes every epoch's shuffle a cheap index
    permutation), through TFDS or from the IDX files (``source``, see
    :func:`resolve_source`). A prepared TFDS folder that cannot be read is
    rebuilt once from the official files, and the run says so
    (:func:`load_tfds`)."""
    if resolve_source(source) == "idx":
        return read_idx(manual_dir)
    return load_tfds(data_dir, manual_dir)
