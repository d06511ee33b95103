"""TensorFlow for the input pipeline only: kept off every accelerator (it
would reserve the memory JAX needs), imported on first use, and without its
start-up banner. Its native libraries log INFO lines to descriptor 2 before
any setting is read (``TF_ENABLE_ONEDNN_OPTS=0`` would change the numerics),
so the import runs with descriptor 2 captured and every other line written back."""

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
    """Descriptor 2 captured, and written back without start-up INFO lines."""
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
