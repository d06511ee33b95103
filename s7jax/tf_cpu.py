"""TensorFlow for the input pipeline only, kept off every accelerator.

tf.data and TFDS run on the host. If TensorFlow initialised the GPU or TPU it
would reserve its memory and compete with JAX for it, so every module of
s7jax takes TensorFlow from :func:`tensorflow`, which hides those devices
before TensorFlow first touches them. The import is deferred so that code on
the JAX-only path never pays for loading TensorFlow.
"""

from __future__ import annotations

import functools
import os


@functools.cache
def tensorflow():
    """The ``tensorflow`` module, configured to see no GPU or TPU."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TF's C++ banners out of the CLI
    import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: devices already initialised (someone imported TF
            # and used it first); ValueError: no such device type here.
            pass
    return tf
