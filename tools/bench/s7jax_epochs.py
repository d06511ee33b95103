"""The s7jax side of ``scripts/bench.py``, its training epochs: one function per pipeline.

Each times ``epochs_measured`` training epochs of model6 from a fresh train
state on a :class:`tools.bench.s7jax_side.Bench`, through the training
loop's own calls: the on-device pipeline (the default on a CPU), the same
batches as one compiled call per epoch (``--pipeline scan``), and the
tf.data pipeline, one and ``STEPS_PER_CALL`` steps per call.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

from tools.bench.measure import clock, compile_timed, epoch_summary, log

if TYPE_CHECKING:  # s7jax_side runs these measurements, and imports this module
    from tools.bench.s7jax_side import Bench

STEPS_PER_CALL = 4  # the grouped epoch's --steps-per-call


def timed_epochs(b: Bench, batches: Any, label: str, per_call: int = 1) -> dict[str, Any]:
    """``epochs_measured`` epochs from a fresh state through the training
    loop's own ``loops.step_through`` (metrics added on the device, fetched
    every 50 steps and at the end), ``per_call`` steps per compiled call.
    ``batches()`` makes the pipeline: the time to its first batch (building,
    tracing, compiling it) is ``setup_s``, and that batch is step 0."""
    import jax

    from s7jax.training import loops
    from s7jax.training.steps import mean_loss_and_accuracy, zero_totals

    b.fresh_state()
    t = time.perf_counter()
    it = batches()
    first = jax.block_until_ready(next(it))
    setup_s = time.perf_counter() - t

    def chain() -> Any:
        yield first
        yield from it

    stream = chain()

    def epoch() -> Any:
        totals = jax.device_put(zero_totals(), b.replicated)
        calls = loops.epoch_calls(0, b.steps, per_call)
        for b.state, totals, _, _, fetch in loops.step_through(b.step_jit, b.state, stream,
                                                               b.key, totals, calls):
            if fetch:
                host = jax.device_get(totals)
        return b.state, host

    per_epoch = []
    for n in range(b.spec["epochs_measured"]):
        seconds, (_, host) = clock(epoch)
        per_epoch.append(seconds)
        loss, acc = mean_loss_and_accuracy(host)
        log(f"s7jax: {label} epoch {n + 1}: {per_epoch[-1]:.2f} s "
            f"(train loss {loss:.4f}, acc {acc:.2f}%)")
    return epoch_summary(per_epoch, b.steps * b.config.batch_size, steps=b.steps,
                         setup_s=setup_s)


def epoch_device(b: Bench) -> dict[str, Any]:
    """Epochs of the on-device pipeline (the default on a CPU): the training
    split on the device, batched and augmented there."""
    return timed_epochs(b, lambda: b.device_data().batches(0, b.sharded), "on-device")


def epoch_scan(b: Bench) -> dict[str, Any]:
    """The same batches, a whole epoch of steps per compiled call
    (``--pipeline scan``, ``lax.scan``): its compile, then its epochs
    (training only, as the other epochs)."""
    import functools

    import jax
    import numpy as np

    from s7jax.training.steps import mean_loss_and_accuracy, train_epoch

    source = b.device_data()
    jitted = jax.jit(functools.partial(train_epoch, batch_sharding=b.sharded),
                     donate_argnums=0, out_shardings=(b.replicated, b.replicated))
    scan, times = compile_timed(jitted, b.fresh_state(), source, b.key, np.int32(0))

    def epoch(n: int) -> Any:
        b.state, totals = scan(b.state, source, b.key, np.int32(n))
        return jax.device_get(totals)  # as the loop reads them after each epoch

    per_epoch = []
    for n in range(b.spec["epochs_measured"]):
        seconds, totals = clock(lambda: epoch(n))
        per_epoch.append(seconds)
        loss, acc = mean_loss_and_accuracy(totals)
        log(f"s7jax: one call per epoch, epoch {n + 1}: {per_epoch[-1]:.2f} s "
            f"(train loss {loss:.4f}, acc {acc:.2f}%)")
    return {"compile_epoch_scan_s": times["compile_s"],
            "epoch_scan": epoch_summary(per_epoch, b.steps * b.config.batch_size, steps=b.steps)}


def tfds_epochs(b: Bench) -> dict[str, Any]:
    """Epochs of the tf.data pipeline (the training loop's batches, put on
    the device one by one), then the same with ``STEPS_PER_CALL`` steps per
    call; skipped where TensorFlow or TFDS is missing."""
    from s7jax import data
    from s7jax.training import loops

    if not data.tfds_available():
        out = {"tfds_skipped": "TensorFlow / TensorFlow Datasets not installed"}
        log(f"s7jax: tf.data epochs skipped: {out['tfds_skipped']}")
        return out

    def batches() -> Any:
        return loops.training_batches(dataclasses.replace(b.config, pipeline="tfds"),
                                      b.train_split, 0, b.sharded, b.replicated)

    return {"epoch_tfds": timed_epochs(b, batches, "tf.data"),
            "epoch_tfds_grouped": timed_epochs(b, batches, f"tf.data, {STEPS_PER_CALL} steps/call",
                                               STEPS_PER_CALL),
            "steps_per_call": STEPS_PER_CALL}
