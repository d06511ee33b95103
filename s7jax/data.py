"""MNIST through TensorFlow Datasets, offline, and the tf.data pipelines.

The first call prepares TFDS's ``mnist`` (in TFDS's own ``data_dir``, which
honours ``TFDS_DATA_DIR``) from the four official files that the repository
keeps in ``data/mnist/``, through TFDS's manual-download mechanism, so no
network is needed. The files are checked against ``SHA256SUMS`` before TFDS
sees them: given a missing file, TFDS would try to download it and take
minutes to fail.

The training pipeline is a pure function of (seed, epoch, step): the epoch's
permutation and each batch's augmentation come from stateless random ops keyed
on those numbers. So the same seed gives the same batches, and a run resumed
at any step sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from s7jax.augment import AugmentConfig, augment_tf
from s7jax.errors import DataError
from s7jax.tf_cpu import tensorflow

MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics after scaling to [0, 1]

MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in host memory: uint8 images ``(N, 28, 28, 1)`` and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, n: int | None) -> "Split":
        """The first ``n`` examples (all when ``n`` is None)."""
        if n is None:
            return self
        if not 0 < n <= len(self):
            raise DataError(f"subset size must be in 1..{len(self)}, got {n}")
        return Split(self.images[:n], self.labels[:n])


def default_manual_dir() -> Path:
    """Where the official files are looked for: ``$S7JAX_MNIST_DIR``, else the
    repository's ``data/mnist``."""
    env = os.environ.get("S7JAX_MNIST_DIR")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data" / "mnist"


def verify_mnist_files(manual_dir: str | os.PathLike) -> None:
    """Raise :class:`DataError` unless all four files exist and match SHA256SUMS."""
    manual_dir = Path(manual_dir)
    fix = f"restore the official MNIST files in {manual_dir} (see data/mnist/README.md) or pass --manual-dir"
    sums_file = manual_dir / "SHA256SUMS"
    if not sums_file.is_file():
        raise DataError(f"missing {sums_file}: {fix}")
    expected = {}
    for line in sums_file.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            expected[name.lstrip("*")] = digest
    for name in MNIST_FILES:
        path = manual_dir / name
        if not path.is_file():
            raise DataError(f"missing MNIST file {path}: {fix}")
        if name not in expected:
            raise DataError(f"{sums_file} has no checksum for {name}: {fix}")
        if hashlib.sha256(path.read_bytes()).hexdigest() != expected[name]:
            raise DataError(f"corrupt MNIST file {path} (SHA-256 mismatch): {fix}")


def _mnist_builder(data_dir):
    import tensorflow_datasets as tfds

    tensorflow()  # TF configured (accelerators hidden) before TFDS initialises it
    return tfds.builder("mnist", data_dir=None if data_dir is None else str(data_dir))


def prepare_mnist(data_dir=None, manual_dir=None):
    """TFDS's ``mnist`` builder, prepared offline from the official files if needed."""
    import tensorflow_datasets as tfds

    builder = _mnist_builder(data_dir)
    if not builder.is_prepared():
        manual_dir = Path(manual_dir) if manual_dir is not None else default_manual_dir()
        verify_mnist_files(manual_dir)
        print(f"preparing TFDS mnist in {builder.data_dir} from {manual_dir} (once)", file=sys.stderr)
        config = tfds.download.DownloadConfig(manual_dir=str(manual_dir), try_download_gcs=False)
        tfds.disable_progress_bar()  # a dozen nested bars for a 20-second job
        builder.download_and_prepare(download_config=config)
    return builder


def load_mnist(data_dir=None, manual_dir=None) -> dict[str, Split]:
    """``{"train": Split, "test": Split}`` read through TFDS into host memory
    (47 MB + 8 MB: small enough to hold, which makes every epoch's shuffle a
    cheap index permutation)."""
    builder = prepare_mnist(data_dir, manual_dir)
    splits = {}
    for name in ("train", "test"):
        arrays = builder.as_dataset(split=name, batch_size=-1, shuffle_files=False)
        splits[name] = Split(
            images=arrays["image"].numpy().astype(np.uint8),
            labels=arrays["label"].numpy().astype(np.int32),
        )
    return splits


def normalize_tf(images_uint8):
    tf = tensorflow()
    return (tf.cast(images_uint8, tf.float32) / 255.0 - MEAN) / STD


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training batches per epoch: the remainder is dropped (a fresh permutation
    every epoch means no image is left out for long), keeping one batch shape."""
    steps = num_examples // batch_size
    if steps == 0:
        raise DataError(f"batch size {batch_size} exceeds the {num_examples} training images")
    return steps


def train_dataset(
    split: Split,
    *,
    batch_size: int,
    seed: int,
    augment: AugmentConfig,
    epochs: int,
    start_step: int = 0,
    clean_epochs: int = 0,
):
    """A tf.data pipeline of ``epochs`` epochs of normalised training batches,
    ``{"image": float32 (B, 28, 28, 1), "label": int32 (B,)}``, starting at
    global step ``start_step``. Epochs ``>= epochs - clean_epochs`` are not
    augmented."""
    tf = tensorflow()
    steps = steps_per_epoch(len(split), batch_size)
    images = tf.constant(split.images)
    labels = tf.constant(split.labels)
    shuffle_seed = tf.constant([seed, 0], tf.int64)
    augment_seed = tf.constant([seed, 1], tf.int64)
    first_clean_epoch = epochs - clean_epochs

    def epoch_indices(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(split)), tf.random.experimental.stateless_fold_in(shuffle_seed, epoch))
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order[: steps * batch_size], (steps, batch_size)))

    def make_batch(step, indices):
        batch = tf.cast(tf.gather(images, indices), tf.float32) / 255.0
        if augment.enabled:
            key = tf.random.experimental.stateless_fold_in(augment_seed, step)
            augmented = augment_tf(batch, key, augment)
            batch = tf.cond(step // steps < first_clean_epoch, lambda: augmented, lambda: batch)
        return {"image": (batch - MEAN) / STD, "label": tf.gather(labels, indices)}

    start_epoch = start_step // steps
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_indices)
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_epoch * steps, epochs * steps), ds)
    ds = ds.skip(start_step - start_epoch * steps)
    # Augmenting whole batches is ~4x faster than per example on a 2-core CPU.
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(split: Split, *, batch_size: int):
    """Normalised batches ``{"image", "label", "mask"}`` covering every example
    exactly once: the last batch is padded to full size and its padding masked
    out, so the eval step compiles once and counts nothing twice."""
    tf = tensorflow()
    n = len(split)
    padded = -(-n // batch_size) * batch_size
    pad = padded - n
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    mask = np.arange(padded) < n
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels, "mask": mask})
    ds = ds.batch(batch_size).map(lambda b: {**b, "image": normalize_tf(b["image"])})
    return ds.prefetch(tf.data.AUTOTUNE)


def as_numpy(ds) -> Iterator[dict[str, np.ndarray]]:
    return ds.as_numpy_iterator()


class DeviceTrainData:
    """The training split resident on the accelerator(s), batched and
    augmented there in JAX: no host pipeline, no host-to-device copies.

    Like :func:`train_dataset`, each batch is a pure function of (seed, step):
    the epoch's permutation comes from ``fold_in(shuffle_key, epoch)`` and the
    augmentation from ``fold_in(augment_key, step)``. The two pipelines sample
    the same distributions with different random streams.
    """

    def __init__(self, split: Split, *, batch_size: int, seed: int, augment: AugmentConfig,
                 epochs: int, clean_epochs: int = 0, sharding=None, replicated=None):
        import jax

        self.steps = steps_per_epoch(len(split), batch_size)
        self.batch_size, self.epochs = batch_size, epochs
        self.images = jax.device_put(split.images, replicated)
        self.labels = jax.device_put(split.labels, replicated)
        key = jax.random.key(seed, impl="rbg")
        self.shuffle_key, self.augment_key = jax.random.split(key)
        first_clean_step = (epochs - clean_epochs) * self.steps
        self._batch = jax.jit(functools.partial(
            _device_batch, batch_size=batch_size, augment=augment,
            first_clean_step=first_clean_step), out_shardings=sharding)
        self._permutation = jax.jit(
            lambda key, epoch: jax.random.permutation(jax.random.fold_in(key, epoch), len(split)),
            out_shardings=replicated)

    def batches(self, start_step: int = 0):
        """Batches from global step ``start_step`` to the end of the run."""
        order = None
        for step in range(start_step, self.epochs * self.steps):
            epoch, i = divmod(step, self.steps)
            if order is None or i == 0:
                order = self._permutation(self.shuffle_key, epoch)
            yield self._batch(self.images, self.labels, order, self.augment_key, step, i)


def _device_batch(images, labels, order, augment_key, step, i, *, batch_size, augment,
                  first_clean_step):
    import jax
    import jax.numpy as jnp

    from s7jax.augment import augment_jax

    idx = jax.lax.dynamic_slice_in_dim(order, i * batch_size, batch_size)
    batch = images[idx].astype(jnp.float32) / 255.0
    if augment.enabled:
        key = jax.random.fold_in(augment_key, step)
        batch = jax.lax.cond(step < first_clean_step, lambda b: augment_jax(b, key, augment),
                             lambda b: b, batch)
    return {"image": (batch - MEAN) / STD, "label": labels[idx]}
