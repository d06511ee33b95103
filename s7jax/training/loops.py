"""The two ways a run trains an epoch, behind one interface.

A run's epoch loop (``s7jax.training.train``) calls ``run_epoch(state, epoch, first,
partial, bar) -> (state, train sums on the host, (test loss, test accuracy))``:
the epoch's steps from ``first`` on, the BN re-estimation and the evaluation.
Two classes implement it over one :class:`RunContext`:

* :class:`StepByStep` (``--pipeline tfds`` or ``device``): one compiled call
  per train step (or per ``--steps-per-call`` steps), the batches from
  tf.data or made on the device; the progress bar moves with the steps and
  Ctrl-C saves a checkpoint at the step it came.
* :class:`EpochPerCall` (``--pipeline scan``): the epoch's steps, the BN
  re-estimation and the evaluation as one compiled program
  (``steps.epoch_program``): one dispatch and one small fetch per epoch.

The helpers that feed them (the run's data, the test set on the device, the
calibration images) also serve the vectorised seeds and the benchmarks.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np

from s7jax import data
from s7jax.training import parallel
from s7jax.config import Config
from s7jax.errors import Interrupted, NonFiniteLossError
from s7jax.runs.recorder import Recorder
from s7jax.training.steps import (Batch, TrainState, accumulate, combine_metrics, epoch_program, eval_step,
                         mean_loss_and_accuracy, precise_batch_stats, train_steps, zero_totals)

FETCH_EVERY = 50  # steps between looks at the metrics: often enough, without stalling the device


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's training and test images (subsets where the config asks) and
    its number of steps per epoch."""

    train: data.Split
    test: data.Split
    steps: int

    @classmethod
    def load(cls, config: Config, data_dir=None, manual_dir=None) -> "RunData":
        splits = data.load_mnist(data_dir, manual_dir, source=config.data_source)
        train = splits["train"].subset(config.train_subset)
        return cls(train, splits["test"].subset(config.test_subset),
                   data.steps_per_epoch(len(train), config.batch_size))


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What a run's epochs need besides the state: its settings, devices,
    data, randomness, BN re-estimation (``stats_fn`` None: none), where it
    writes, and the flag a signal sets."""

    config: Config
    mesh: Any
    data: RunData
    dropout_key: jax.Array
    stats_fn: Callable | None
    calibration: jax.Array | None
    recorder: Recorder
    interrupted: dict[str, Any]


def calibration_images(split: data.Split, n: int, seed: int) -> np.ndarray:
    """``n`` clean, normalised training images (a fixed random subset) for
    re-estimating the BN statistics."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return data.normalize(split.images[pick], np.float64)


def device_train_data(config: Config, split: data.Split, replicated) -> data.DeviceTrainData:
    return data.DeviceTrainData.create(
        split, batch_size=config.batch_size, seed=config.seed, augment=config.augment,
        epochs=config.epochs, clean_epochs=config.clean_epochs, replicated=replicated)


def training_batches(config: Config, split: data.Split, start_step: int, sharding, replicated):
    """The run's training batches from ``start_step`` on, on the device(s):
    from tf.data on the host, or made on the device (``config.pipeline``)."""
    if config.pipeline == "device":
        return device_train_data(config, split, replicated).batches(start_step, sharding)
    return (jax.device_put(b, sharding) for b in data.as_numpy(data.train_dataset(
        split, start_step=start_step, batch_size=config.batch_size, seed=config.seed,
        augment=config.augment, epochs=config.epochs, clean_epochs=config.clean_epochs)))


def device_eval_batches(split: data.Split, batch_size: int, sharding=None) -> list[Batch]:
    """The test set is small: put it on the device(s) once for every evaluation."""
    stacked = data.eval_batches(split, batch_size=batch_size)
    return [jax.device_put({k: v[i] for k, v in stacked.items()}, sharding)
            for i in range(len(stacked["label"]))]


def stacked_test_set(split: data.Split, batch_size: int, mesh) -> Batch:
    """The test set as stacked batches ``(n, B, ...)`` on the device(s), for
    the evaluation inside one compiled program."""
    return jax.device_put(data.eval_batches(split, batch_size=batch_size),
                          parallel.stacked_batch_sharded(mesh))


def evaluate(eval_fn: Callable, state: TrainState, batches: list[Batch]) -> tuple[float, float]:
    """(mean loss, accuracy %) of ``state`` over every unmasked example."""
    totals = {k: v for k, v in zero_totals().items() if k != "nonfinite_step"}
    for batch in batches:
        totals = accumulate(totals, eval_fn(state, batch))
    return mean_loss_and_accuracy(jax.device_get(totals))


def compiled(program, args: tuple, log: Callable[[str], None], what: str):
    """``program`` compiled for ``args`` ahead of the loop, saying how long it took."""
    t = time.perf_counter()
    out = program.lower(*args).compile()
    log(f"{what}compiled the epoch program in {time.perf_counter() - t:.1f} s")
    return out


def epoch_calls(first: int, steps: int, per_call: int):
    """The compiled calls that cover an epoch's steps ``first .. steps - 1``:
    ``(steps in the call, is it the epoch's last, fetch the metrics after it)``,
    in groups of ``per_call``, fetching when a group reaches or crosses a
    multiple of ``FETCH_EVERY`` and after the last."""
    done = first
    while done < steps:
        n = min(per_call, steps - done)
        done += n
        last = done == steps
        yield n, last, last or done // FETCH_EVERY > (done - n) // FETCH_EVERY


def step_through(train_fn: Callable, state: TrainState, batches, key: jax.Array, totals,
                 calls) -> Iterator[tuple[TrainState, Any, int, bool, bool]]:
    """Run an epoch's compiled calls: for each ``(n, last, fetch)`` of
    ``calls`` (from :func:`epoch_calls`), train ``n`` steps on the next ``n``
    batches with ``train_fn`` (jitted ``steps.train_steps``) and add their
    metrics to ``totals`` on the device; yield ``(state, totals, n, last,
    fetch)`` after each call, so that the caller can fetch the metrics, move a
    progress bar or stop. The training loop and ``scripts/bench.py`` both
    run their epochs through it."""
    for n, last, fetch in calls:
        state, metrics = train_fn(state, tuple(next(batches) for _ in range(n)), key)
        totals = accumulate(totals, metrics)
        yield state, totals, n, last, fetch


def check_finite(host: dict, epoch: int) -> None:
    if host["nonfinite_step"] >= 0:
        raise NonFiniteLossError(epoch + 1, int(host["nonfinite_step"]))


# The compiled programs of the two loops, as they jit them (tests/test_lowering.py
# lowers each for TPU and CUDA).


def jit_steps(mesh) -> tuple[Callable, Callable]:
    """The step-by-step loop's ``(train_steps, eval_step)``, jitted for ``mesh``."""
    replicated = parallel.replicated(mesh)
    return (jax.jit(train_steps, donate_argnums=0, out_shardings=(replicated, replicated)),
            jax.jit(eval_step, out_shardings=replicated))


def jit_epoch_program(stats_fn, eval_batch_size: int, mesh) -> Callable:
    """``--pipeline scan``'s epoch program (``steps.epoch_program``), jitted for ``mesh``."""
    replicated = parallel.replicated(mesh)
    return jax.jit(epoch_program(stats_fn, eval_batch_size, parallel.batch_sharded(mesh)),
                   static_argnames="first", donate_argnums=0,
                   out_shardings=(replicated, replicated, replicated))


class StepByStep:
    """``--pipeline tfds`` or ``device``: ``config.steps_per_call`` steps per
    compiled call, metrics fetched every ``FETCH_EVERY`` steps, Ctrl-C saved
    at the step it came."""

    def __init__(self, ctx: RunContext, start_step: int):
        self.ctx = ctx
        replicated, sharded = parallel.replicated(ctx.mesh), parallel.batch_sharded(ctx.mesh)
        self.train_fn, self.eval_fn = jit_steps(ctx.mesh)
        self.test = device_eval_batches(ctx.data.test, ctx.config.eval_batch_size, sharded)
        self.batches = training_batches(ctx.config, ctx.data.train, start_step, sharded,
                                        replicated)

    def __call__(self, state, epoch, first, partial, bar):
        ctx = self.ctx
        totals = jax.device_put(partial if partial else zero_totals(),
                                parallel.replicated(ctx.mesh))
        calls = epoch_calls(first, ctx.data.steps, ctx.config.steps_per_call)
        for state, totals, n, last, fetch in step_through(self.train_fn, state, self.batches,
                                                          ctx.dropout_key, totals, calls):
            bar.update(n)
            if ctx.interrupted["set"] or fetch:
                host = jax.device_get(totals)
                check_finite(host, epoch)
                loss, acc = mean_loss_and_accuracy(host)
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}")
            if ctx.interrupted["set"] and not last:
                ctx.recorder.save_within_epoch(state, int(state.step), epoch, host)
                raise Interrupted(int(state.step), ctx.recorder.workdir,
                                  signum=ctx.interrupted["signum"])
        if ctx.stats_fn is not None:
            state = state.replace(batch_stats=precise_batch_stats(
                ctx.stats_fn, state, ctx.calibration, ctx.config.eval_batch_size))
        return state, host, evaluate(self.eval_fn, state, self.test)


class EpochPerCall:
    """``--pipeline scan``: one compiled program per epoch (compiled here,
    ahead of the loop, so the run can say how long compiling took)."""

    def __init__(self, ctx: RunContext, state: TrainState, log: Callable[[str], None]):
        self.ctx = ctx
        self.source = device_train_data(ctx.config, ctx.data.train, parallel.replicated(ctx.mesh))
        self.test = stacked_test_set(ctx.data.test, ctx.config.eval_batch_size, ctx.mesh)
        self.program = jit_epoch_program(ctx.stats_fn, ctx.config.eval_batch_size, ctx.mesh)
        self.whole_epoch = compiled(self.program, self._args(state, 0), log, "")

    def _args(self, state, epoch):
        return (state, self.source, self.ctx.dropout_key, np.int32(epoch), self.ctx.calibration,
                self.test)

    def __call__(self, state, epoch, first, partial, bar):
        args = self._args(state, epoch)
        state, train_totals, test_totals = (
            self.whole_epoch(*args) if first == 0 else self.program(*args, first=first))
        host, test_host = jax.device_get((train_totals, test_totals))
        if partial:
            host = combine_metrics(host, partial)  # the interrupted epoch's earlier steps
        check_finite(host, epoch)
        bar.update(self.ctx.data.steps - first)
        return state, host, mean_loss_and_accuracy(test_host)
