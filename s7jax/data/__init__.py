"""MNIST from its four official files, and the input pipelines, in the order
the data flows: ``files`` (checked and read with numpy), ``tfds`` (TFDS's
``mnist`` prepared offline from them), :func:`load_mnist`, ``host`` (the
tf.data pipeline, evaluation batches) and ``device`` (batches made on the
accelerator). Every pipeline is a pure function of (seed, step), so a resumed
run sees the batches the uninterrupted one would have. Nothing imports
TensorFlow until a TFDS or tf.data function is called."""

from __future__ import annotations

from s7jax.data.device import DeviceTrainData
from s7jax.data.files import Split, default_manual_dir, read_idx, verify_mnist_files
from s7jax.data.host import MEAN, STD, eval_batches, normalize, steps_per_epoch, train_dataset
from s7jax.data.tfds import (check_files, load_tfds, prepare_mnist, tfds_available,
                             tfds_installed)
from s7jax.errors import ConfigError


def resolve_source(source: str) -> str:
    """``tfds`` or ``idx`` for ``source`` (``auto``: TFDS where it imports)."""
    if source == "auto":
        return "tfds" if tfds_available() else "idx"
    if source == "tfds" and not tfds_available():
        raise ConfigError("--data-source tfds needs tensorflow and tensorflow-datasets, which do "
                          "not import here; use --data-source idx")
    return source


def load_mnist(data_dir=None, manual_dir=None, source: str = "auto") -> dict[str, Split]:
    """``{"train", "test"}`` Splits in host memory (55 MB: a shuffle is an index permutation)."""
    if resolve_source(source) == "idx":
        return read_idx(manual_dir)
    return load_tfds(data_dir, manual_dir)
