"""Batches made on the host: the normalisation every pipeline shares, the
tf.data training pipeline (stateless random ops keyed on seed, epoch and
step) and the evaluation batches. TensorFlow loads only in :func:`train_dataset`."""

from __future__ import annotations

import numpy as np

from s7jax.data.augment import AugmentConfig, augment_tf
from s7jax.data.files import Split
from s7jax.errors import DataError
from s7jax.data.tf_cpu import tensorflow

MEAN, STD = 0.1307, 0.3081  # training-set pixel statistics after scaling to [0, 1]


def normalize(images_uint8, compute_dtype=np.float32):
    """uint8 pixels -> ``(x / 255 - MEAN) / STD``, in float32 like tf.data
    (the recorded runs' BN calibration images used ``np.float64``)."""
    d = np.dtype(compute_dtype)
    x = images_uint8.astype(d) / d.type(255.0)
    return ((x - d.type(MEAN)) / d.type(STD)).astype(np.float32)


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    """Training batches per epoch: the remainder is dropped (one batch shape;
    each epoch's fresh permutation leaves no image out for long)."""
    steps = num_examples // batch_size
    if steps == 0:
        raise DataError(f"batch size {batch_size} exceeds the {num_examples} training images")
    return steps


def train_dataset(split: Split, *, batch_size: int, seed: int, augment: AugmentConfig,
                  epochs: int, start_step: int = 0, clean_epochs: int = 0):
    """tf.data batches from global step ``start_step``, the last ``clean_epochs`` clean."""
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
            # Inside the branch, so that clean epochs skip the augmentation's work.
            batch = tf.cond(step // steps < first_clean_epoch,
                            lambda: augment_tf(batch, key, augment), lambda: batch)
        return {"image": (batch - MEAN) / STD, "label": tf.gather(labels, indices)}

    start_epoch = start_step // steps
    ds = tf.data.Dataset.range(start_epoch, epochs).flat_map(epoch_indices)
    ds = tf.data.Dataset.zip(tf.data.Dataset.range(start_epoch * steps, epochs * steps), ds)
    ds = ds.skip(start_step - start_epoch * steps)
    # Augmenting whole batches is ~4x faster than per example on a 2-core CPU.
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_batches(split: Split, *, batch_size: int) -> dict[str, np.ndarray]:
    """Stacked batches, the last padded and masked: the eval step compiles once."""
    n = len(split)
    batches = -(-n // batch_size)
    pad = batches * batch_size - n
    images = np.concatenate([split.images, np.zeros((pad, *split.images.shape[1:]), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    return {"image": normalize(images).reshape(batches, batch_size, *images.shape[1:]),
            "label": labels.reshape(batches, batch_size),
            "mask": (np.arange(batches * batch_size) < n).reshape(batches, batch_size)}
