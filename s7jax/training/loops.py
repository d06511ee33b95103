"""The epoch loop of every run, and the two ways of training an epoch.

:func:`record_epochs` is the loop of every run (one seed, seeds together, the
PyTorch referee). Its ``run_epoch(state, epoch, first, partial, bar)``
returns ``(state, [(train, test), ...])``, a (mean loss, accuracy %) pair of
each per record; :class:`StepByStep` (``--pipeline tfds``, ``device``: a
compiled call per step) and :class:`EpochPerCall` (``--pipeline scan``, seeds
together: one per epoch) implement it."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Iterator, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from s7jax import data
from s7jax.config import Config
from s7jax.errors import Interrupted, NonFiniteLossError
from s7jax.models.seedwise import over_seeds
from s7jax.runs import checkpoint, recorder, runfiles
from s7jax.training import console, parallel
from s7jax.training.steps import (Batch, TrainState, accumulate, combine_metrics, epoch_program,
                                  eval_step, make_batch_stats_fn, mean_loss_and_accuracy,
                                  precise_batch_stats, train_steps, zero_totals)

FETCH_EVERY = 50  # steps between looks at the metrics: often enough, without stalling the device


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's training and test images (subsets where asked), its steps per epoch."""

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
    """What a run's epochs need besides the state. With ``seeds`` (seeds
    together), ``dropout_key`` and ``calibration`` carry a leading seed axis."""

    config: Config
    mesh: Any
    data: RunData
    dropout_key: jax.Array
    stats_fn: Callable | None  # BN re-estimation; None: none
    calibration: jax.Array | None
    seeds: Sequence[int] | None = None
    strategy: str = "vmap"  # with seeds: vmap or map (over_seeds)

    @classmethod
    def create(cls, config: Config, mesh, run_data: RunData, model: nn.Module,
               dropout_key: jax.Array, seeds: Sequence[int] | None = None,
               strategy: str = "vmap") -> "RunContext":
        calibration = None
        if config.precise_bn:
            images = [calibration_images(run_data.train, config.precise_bn, s)
                      for s in seeds or [config.seed]]
            calibration = jax.device_put(np.stack(images) if seeds else images[0],
                                         parallel.replicated(mesh))
        return cls(config, mesh, run_data, dropout_key,
                   make_batch_stats_fn(model) if config.precise_bn else None, calibration, seeds,
                   strategy)


def stack(trees: Sequence[Any]) -> Any:
    """Trees of one shape -> one tree with a leading axis (static fields, such
    as each train state's own optimiser object, taken from the first)."""
    leaves = [jax.tree.leaves(t) for t in trees]
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [jnp.stack(xs) for xs in zip(*leaves, strict=True)])


def unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def calibration_images(split: data.Split, n: int, seed: int) -> np.ndarray:
    """``n`` clean, normalised training images (a fixed random subset) for BN's statistics."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return data.normalize(split.images[pick], np.float64)


def device_train_data(config: Config, split: data.Split, replicated) -> data.DeviceTrainData:
    return data.DeviceTrainData.create(
        split, batch_size=config.batch_size, seed=config.seed, augment=config.augment,
        epochs=config.epochs, clean_epochs=config.clean_epochs, replicated=replicated)


def training_batches(config: Config, split: data.Split, start_step: int, sharding, replicated):
    """Training batches from ``start_step`` on, from tf.data or made on the device."""
    if config.pipeline == "device":
        return device_train_data(config, split, replicated).batches(start_step, sharding)
    return (jax.device_put(b, sharding) for b in data.train_dataset(
        split, start_step=start_step, batch_size=config.batch_size, seed=config.seed,
        augment=config.augment, epochs=config.epochs,
        clean_epochs=config.clean_epochs).as_numpy_iterator())


def device_eval_batches(split: data.Split, batch_size: int, sharding=None) -> list[Batch]:
    """The test set is small: put it on the device(s) once for every evaluation."""
    stacked = data.eval_batches(split, batch_size=batch_size)
    return [jax.device_put({k: v[i] for k, v in stacked.items()}, sharding)
            for i in range(len(stacked["label"]))]


def evaluate(eval_fn: Callable, state: TrainState, batches: list[Batch]) -> tuple[float, float]:
    """(mean loss, accuracy %) of ``state`` over every unmasked example."""
    totals = {k: v for k, v in zero_totals().items() if k != "nonfinite_step"}
    for batch in batches:
        totals = accumulate(totals, eval_fn(state, batch))
    return mean_loss_and_accuracy(jax.device_get(totals))


def epoch_calls(first: int, steps: int, per_call: int):
    """``(steps in the call, the epoch's last?, fetch the metrics after it?)``
    for steps ``first .. steps - 1`` in groups of ``per_call``, fetching on
    reaching or crossing a multiple of ``FETCH_EVERY`` and after the last."""
    done = first
    while done < steps:
        n = min(per_call, steps - done)
        done += n
        last = done == steps
        yield n, last, last or done // FETCH_EVERY > (done - n) // FETCH_EVERY


def step_through(train_fn: Callable, state: TrainState, batches, key: jax.Array, totals,
                 calls) -> Iterator[tuple[TrainState, Any, int, bool, bool]]:
    """Train ``n`` steps on the next ``n`` batches for each ``(n, last,
    fetch)`` of ``calls``, the metrics summed on the device; yield after each
    call, for the caller to fetch, move a bar or stop (also the benchmarks')."""
    for n, last, fetch in calls:
        state, metrics = train_fn(state, tuple(next(batches) for _ in range(n)), key)
        totals = accumulate(totals, metrics)
        yield state, totals, n, last, fetch


def check_finite(host: dict, epoch: int) -> None:
    if host["nonfinite_step"] >= 0:
        raise NonFiniteLossError(epoch + 1, int(host["nonfinite_step"]))


# The compiled programs, as the loops jit them (tests/test_lowering.py lowers each).


def jit_steps(mesh) -> tuple[Callable, Callable]:
    """The step-by-step loop's ``(train_steps, eval_step)``, jitted for ``mesh``."""
    replicated = parallel.replicated(mesh)
    return (jax.jit(train_steps, donate_argnums=0, out_shardings=(replicated, replicated)),
            jax.jit(eval_step, out_shardings=replicated))


def jit_epoch_program(stats_fn, eval_batch_size: int, mesh, seed_axes=None,
                      strategy: str = "vmap") -> Callable:
    """``steps.epoch_program`` jitted for ``mesh``; with ``seed_axes`` (the
    source's, from ``DeviceTrainData.for_seeds``) over a seed axis of the
    state, the key, the source and the calibration images (:func:`over_seeds`)."""
    replicated = parallel.replicated(mesh)
    run = epoch_program(stats_fn, eval_batch_size, parallel.batch_sharded(mesh))
    if seed_axes is not None:
        run = over_seeds(run, (0, seed_axes, 0, None, 0 if stats_fn else None, None), strategy)
    return jax.jit(run, static_argnames="first", donate_argnums=0,
                   out_shardings=(replicated, replicated, replicated))


class StepByStep:
    """``--pipeline tfds`` or ``device``: ``config.steps_per_call`` steps per
    compiled call, metrics fetched every ``FETCH_EVERY`` steps; when
    ``interrupted`` is set, a checkpoint of the step it came."""

    def __init__(self, ctx: RunContext, start_step: int, record: recorder.Recorder,
                 interrupted: dict[str, Any]):
        self.ctx, self.record, self.interrupted = ctx, record, interrupted
        replicated, sharded = parallel.replicated(ctx.mesh), parallel.batch_sharded(ctx.mesh)
        self.train_fn, self.eval_fn = jit_steps(ctx.mesh)
        self.test = device_eval_batches(ctx.data.test, ctx.config.eval_batch_size, sharded)
        self.batches = training_batches(ctx.config, ctx.data.train, start_step, sharded,
                                        replicated)

    def __call__(self, state, epoch, first, partial, bar):
        ctx, interrupted = self.ctx, self.interrupted
        totals = jax.device_put(partial if partial else zero_totals(),
                                parallel.replicated(ctx.mesh))
        calls = epoch_calls(first, ctx.data.steps, ctx.config.steps_per_call)
        for state, totals, n, last, fetch in step_through(self.train_fn, state, self.batches,
                                                          ctx.dropout_key, totals, calls):
            bar.update(n)
            stop = interrupted["set"]  # read once: a signal between two reads saves stale sums
            if stop or fetch:
                host = jax.device_get(totals)
                check_finite(host, epoch)
                loss, acc = mean_loss_and_accuracy(host)
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}")
            if stop and not last:
                self.record.save(state, int(state.step), epoch, host)
                raise Interrupted(int(state.step), self.record.workdir,
                                  signum=interrupted["signum"])
        if ctx.stats_fn is not None:
            state = state.replace(batch_stats=precise_batch_stats(
                ctx.stats_fn, state, ctx.calibration, ctx.config.eval_batch_size))
        return state, [(mean_loss_and_accuracy(host), evaluate(self.eval_fn, state, self.test))]


class EpochPerCall:
    """``--pipeline scan``, or seeds together: one compiled program per epoch
    (compiled here, ahead of the loop, so the run can say how long it took)."""

    def __init__(self, ctx: RunContext, state: TrainState, log: Callable[[str], None]):
        self.ctx = ctx
        source = device_train_data(ctx.config, ctx.data.train, parallel.replicated(ctx.mesh))
        self.source, axes = source.for_seeds(ctx.seeds) if ctx.seeds else (source, None)
        test = data.eval_batches(ctx.data.test, batch_size=ctx.config.eval_batch_size)
        self.test = jax.device_put(test, parallel.stacked_batch_sharded(ctx.mesh))  # (n, B, ...)
        self.program = jit_epoch_program(ctx.stats_fn, ctx.config.eval_batch_size, ctx.mesh, axes,
                                         ctx.strategy)
        what = (f"{len(ctx.seeds)} seeds of {ctx.config.model} in one program "
                f"({'jax.vmap' if ctx.strategy == 'vmap' else 'lax.map'}); " if ctx.seeds else "")
        t = time.perf_counter()
        self.whole_epoch = self.program.lower(*self._args(state, 0)).compile()
        log(f"{what}compiled the epoch program in {time.perf_counter() - t:.1f} s")

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
        sums = ([(unstack(host, i), unstack(test_host, i)) for i in range(len(self.ctx.seeds))]
                if self.ctx.seeds else [(host, test_host)])
        for train_sums, _ in sums:  # every seed's before any is recorded
            check_finite(train_sums, epoch)
        bar.update(self.ctx.data.steps - first)
        return state, [tuple(map(mean_loss_and_accuracy, pair)) for pair in sums]


def record_epochs(records: Sequence[recorder.Recorder], run_epoch: Callable, state, *,
                  epochs: int, steps: int, lr: Callable[[int], Any], show_progress: bool,
                  start_step: int = 0, partial: dict | None = None, stacked: bool = False,
                  checkpoint_every: int = 1, interrupted: dict[str, Any] | None = None,
                  how: str | None = None):
    """The epochs from ``start_step`` on, each ended in every record: its row,
    and its state (one seed's slice of a ``stacked`` one) as a checkpoint every
    ``checkpoint_every`` epochs, after the last and on a signal, which stops
    the run after the epoch (``interrupted``: ``recorder.unset_flag()``; None:
    signals left alone; ``how``: how to resume). The state after the last."""
    stop = interrupted is not None
    with recorder.interrupt_flag(interrupted) if stop else contextlib.nullcontext():
        records[0].log(f"{'seed':>4}  " * stacked + console.table_header())  # signals caught
        for epoch in range(start_step // steps, epochs):
            epoch_start = time.perf_counter()
            first = max(start_step - epoch * steps, 0)
            try:
                with console.progress_bar(epoch + 1, epochs, steps, first, show_progress) as bar:
                    state, results = run_epoch(state, epoch, first, partial, bar)
            except NonFiniteLossError as e:  # say what is kept
                raise NonFiniteLossError(e.epoch, e.step, checkpoint.latest_step(
                    records[0].checkpoint_dir)) from None
            seconds = time.perf_counter() - epoch_start  # shared by the seeds trained in it
            partial, step = None, (epoch + 1) * steps
            # Read once: a signal during the writes below waits for the next epoch's first step.
            flagged = stop and interrupted["set"]
            save = state is not None and ((epoch + 1) % checkpoint_every == 0
                                          or epoch + 1 == epochs or flagged)
            for i, (record, (train, test)) in enumerate(zip(records, results, strict=True)):
                row = dict(zip(runfiles.METRIC_KEYS, (epoch + 1, float(lr(step - 1)), *train, *test,
                                                      seconds), strict=True))
                record.end_epoch(row, steps - first, step=step,
                                 state=(unstack(state, i) if stacked else state) if save else None)
            if flagged and epoch + 1 < epochs:  # after the last: done anyway
                where = records[0].workdir.parent if stacked else records[0].workdir
                raise Interrupted(step, where, how=how, signum=interrupted["signum"])
    return state
