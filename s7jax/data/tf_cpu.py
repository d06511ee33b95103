"""TensorFlow for the input pipeline only: kept off every accelerator, and
imported without its start-up banner.

tf.data and TFDS run on the host. If TensorFlow initialised the GPU or TPU it
would reserve its memory and compete with JAX for it, so every module of
s7jax takes TensorFlow from :func:`tensorflow`, which hides those devices
before TensorFlow first touches them. The import is deferred so that code on
the JAX-only path never pays for loading TensorFlow.

TensorFlow's native libraries log a few INFO lines while they load (absl's
"All log messages before absl::InitializeLog()..." and oneDNN's notice, once
per library) straight to file descriptor 2, before any setting of theirs is
read: ``TF_CPP_MIN_LOG_LEVEL`` does not silence them, and
``TF_ENABLE_ONEDNN_OPTS=0`` would change TensorFlow's numerics, and with them
the recorded runs. So the import runs with descriptor 2 captured, and every
captured line but those INFO lines is written back: a real warning or error
of the import still reaches stderr.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
import tempfile

# absl's INFO lines ("I0000 00:00:... port.cc:153] ..."), its pre-init notice,
# and the second line of cpu_feature_guard's INFO message.
_BANNER = re.compile(r"^(I\d{4} [\d:.]+ +\d+ \S+:\d+\] |"
                     r"WARNING: All log messages before absl::InitializeLog\(\) is called|"
                     r"To enable the following instructions: .* in other operations, rebuild)")


@contextlib.contextmanager
def without_startup_banner():
    """Capture what native code writes to descriptor 2 in the block, then
    write back every line that is not a start-up INFO line."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(True)
                    if not _BANNER.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


@functools.cache
def tensorflow():
    """The ``tensorflow`` module, configured to see no GPU or TPU."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's own C++ warnings below errors
    with without_startup_banner():
        import tensorflow as tf

    for kind in ("GPU", "TPU"):
        try:
            tf.config.set_visible_devices([], kind)
        except (RuntimeError, ValueError):
            # RuntimeError: devices already initialised (someone imported TF
            # and used it first); ValueError: no such device type here.
            pass
    return tf
