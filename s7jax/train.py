"""A training run: data, state, the epoch loop, metrics, checkpoints.

``train_and_evaluate`` drives the pure steps of ``s7jax.steps`` in one of
two loops, chosen by ``Config.pipeline`` (``auto``: by the backend):

* **step by step** (``tfds``, ``device``): one compiled call per train step
  (or per ``--steps-per-call`` steps), the batches from tf.data on the host
  or made on the device; a progress bar that moves with the steps; Ctrl-C
  honoured between steps. The CPU default (``tfds`` where TensorFlow Datasets
  is installed, else ``device``): on XLA:CPU a rolled ``lax.scan`` of the
  step runs slower than the same steps dispatched one by one, and every run
  under ``results/`` was trained this way, bit for bit repeatable.
* **an epoch per call** (``scan``): the epoch's steps (``lax.scan`` over
  batches gathered and augmented on the device), the BN re-estimation and
  the evaluation of the test set in one compiled program: one dispatch and
  one small fetch per epoch. The GPU and TPU default, where a model6 step is
  a fraction of a millisecond and Python dispatch would set the pace.

Both write the same files (``s7jax.runfiles``), the same table, and a
checkpoint after every epoch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import numpy as np

from s7jax import checkpoint, console, data, events, parallel, rundir, runfiles
from s7jax.config import TRAIN_IMAGES, Config
from s7jax.errors import CheckpointError, ConfigError, Interrupted, NonFiniteLossError
from s7jax.models import get_model
from s7jax.steps import (Batch, TrainState, accumulate, combine_metrics, epoch_program, eval_step, initial_state, learning_rate_schedule, make_batch_stats_fn, precise_batch_stats, summarize, train_steps, zero_totals)

FETCH_EVERY = 50  # steps between looks at the metrics: often enough, without stalling the device


def resolve(config: Config, backend: str | None = None) -> Config:
    """``config`` with its ``auto`` settings decided for this machine, as the
    run records them in ``config.json`` (so that a repeat takes the same path).

    The pipeline: ``scan`` on an accelerator, ``device`` on a CPU (the same
    batches and steps, one call per step, so the progress bar moves and
    Ctrl-C stops at a step). The data source: TFDS for the tf.data pipeline,
    and the IDX files for the on-device pipelines, which need only the
    arrays: the same images without TensorFlow's ~750 MB runtime in the
    process (``--data-source tfds`` reads them through TFDS instead)."""
    backend = backend or jax.default_backend()
    pipeline = config.pipeline
    if pipeline == "auto":
        pipeline = "scan" if backend != "cpu" else "device"
    elif pipeline == "tfds" and not data.tfds_available():
        raise ConfigError("--pipeline tfds needs tensorflow and tensorflow-datasets, which do not "
                          "import here; use --pipeline device or scan")
    source = config.data_source
    if source == "auto":
        source = "tfds" if pipeline == "tfds" else "idx"
    source = data.resolve_source(source)
    if pipeline == "scan" and config.steps_per_call != 1:
        raise ConfigError("--steps-per-call applies to --pipeline tfds or device; "
                          "--pipeline scan runs a whole epoch per call")
    return dataclasses.replace(config, data_source=source, pipeline=pipeline)


def matmul_precision(config: Config):
    """A context in which the run's programs are traced with its matmul
    precision (``Config.matmul_precision``): JAX's per-backend default is
    left alone unless another is asked for."""
    if config.matmul_precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(config.matmul_precision)


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
    return summarize(jax.device_get(totals))


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


@contextlib.contextmanager
def sigint_flag():
    """Turn Ctrl-C, and SIGTERM (what ``timeout``, a scheduler or a container
    runtime sends), into a flag checked between steps, so a donated state is
    never left half-updated: ``flag["set"]``, and ``flag["signum"]`` the
    signal that came."""
    flag = {"set": False, "signum": signal.SIGINT}

    def handler(signum, frame):
        flag["set"], flag["signum"] = True, signum

    handled = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {s: signal.signal(s, handler) for s in handled}
    except ValueError:  # not the main thread: no signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def checkpoint_record(epoch: int, history: list, partial: dict | None) -> dict:
    partial = None if partial is None else {k: np.asarray(v).item() for k, v in partial.items()}
    return {"epoch": epoch, "history": history, "partial": partial}


def _check_finite(host: dict, epoch: int) -> None:
    if host["nonfinite_step"] >= 0:
        raise NonFiniteLossError(epoch + 1, int(host["nonfinite_step"]))


def _describe_source(config: Config, data_dir, manual_dir) -> str:
    if config.data_source == "tfds":
        return f"MNIST through TFDS (data_dir {data_dir or 'TFDS default'})"
    return (f"MNIST from the IDX files in {manual_dir or data.default_manual_dir()} "
            "(read with numpy, without TensorFlow)")


def train_and_evaluate(
    config: Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    mesh=None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
    on_start: Callable[[], None] | None = None,
    refusal_advice: str | None = None,
) -> list[dict[str, Any]]:
    """Train ``config.model`` and evaluate it after every epoch; return the
    per-epoch metrics (also appended to ``<workdir>/metrics.jsonl``).

    What needs no data is checked first, so that its errors come at once:
    the batch against the devices, then the folder (``s7jax.rundir.claim``:
    one that holds another run is refused, unless ``resume``, continue from
    its latest intact checkpoint, or ``overwrite``, replace it;
    ``refusal_advice`` says what to do instead in the caller's terms), then
    with ``resume`` the checkpoint, restored and verified. Only then
    ``on_start()`` (the scripts print their banner there), the ``auto``
    settings (:func:`resolve`) and the data.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_divisible(config.batch_size, mesh)  # before the folder is touched
    parallel.check_divisible(config.eval_batch_size, mesh, "eval batch size")
    with rundir.claim(workdir, resume=resume, overwrite=overwrite,
                      advice=refusal_advice) as workdir, matmul_precision(config):
        start = _starting_point(config, workdir, resume, log)
        if on_start is not None:
            on_start()
        data.check_files(config.data_source, data_dir, manual_dir)  # before TensorFlow loads
        config = resolve(config)
        return _run(config, workdir, start, mesh=mesh, data_dir=data_dir, manual_dir=manual_dir,
                    show_progress=show_progress, log=log)


def _starting_point(config: Config, workdir: Path, resume: bool, log: Callable[[str], None]):
    """``(state, dropout key, history, partial epoch's sums)`` the run starts
    from: fresh, or with ``resume`` its latest intact checkpoint. A folder
    whose recorded epochs no checkpoint can continue is refused, untouched:
    training it again from step 0 would destroy the record (a run under
    ``results/`` keeps its metrics, not its checkpoints)."""
    ckpt_dir = runfiles.checkpoint_dir(workdir)
    restoring = resume and checkpoint.latest_step(ckpt_dir) is not None
    if resume and not restoring:
        recorded = runfiles.read_metrics(workdir)
        if recorded:
            raise CheckpointError(
                f"--resume {workdir}: no checkpoint in {ckpt_dir} to continue its "
                f"{len(recorded)} recorded epoch(s) from; the run is left as it was (to train it "
                "again, use scripts/reproduce.py or a new --workdir)")
    steps = data.steps_per_epoch(config.train_subset or TRAIN_IMAGES, config.batch_size)
    state, dropout_key = initial_state(config, learning_rate_schedule(config, steps))
    if not restoring:  # a new run, or one that saved nothing yet: from the start
        return state, dropout_key, [], None
    state, record = checkpoint.restore(ckpt_dir, state, log=log)
    log(f"resumed from step {int(state.step)} (epoch {record['epoch'] + 1})")
    return state, dropout_key, record["history"], record["partial"]


def _run(config: Config, workdir: Path, start, *, mesh, data_dir, manual_dir,
         show_progress: bool, log: Callable[[str], None]) -> list[dict[str, Any]]:
    replicated = parallel.replicated(mesh)

    log(_describe_source(config, data_dir, manual_dir))
    splits = data.load_mnist(data_dir, manual_dir, source=config.data_source)
    train_split = splits["train"].subset(config.train_subset)
    test_split = splits["test"].subset(config.test_subset)
    steps = data.steps_per_epoch(len(train_split), config.batch_size)

    model = get_model(config.model)
    schedule = learning_rate_schedule(config, steps)
    state, dropout_key, history, partial = start
    ckpt_dir = runfiles.checkpoint_dir(workdir)
    if history or int(state.step):
        runfiles.write_metrics(workdir, history)  # the rows of the checkpoint's epochs
    else:
        runfiles.write_config(workdir, config)
        runfiles.write_metrics(workdir, [])
    start_step = int(state.step)
    if start_step >= config.epochs * steps:
        log("run already complete")
        return history

    state = jax.device_put(state, replicated)
    stats_fn = make_batch_stats_fn(model) if config.precise_bn else None
    calibration = (jax.device_put(calibration_images(train_split, config.precise_bn, config.seed),
                                  replicated) if config.precise_bn else None)
    log(f"pipeline {config.pipeline}: " + (
        "one compiled call per epoch (train steps, BN re-estimation, evaluation)"
        if config.pipeline == "scan" else
        f"{config.steps_per_call} train step(s) per compiled call, "
        f"batches {'made on the device' if config.pipeline == 'device' else 'from tf.data'}"))

    make = _epoch_per_call if config.pipeline == "scan" else _steps_per_call
    run_epoch = make(config, mesh, train_split, test_split, state, dropout_key, start_step,
                     stats_fn, calibration, ckpt_dir, history, log)

    run_start = time.perf_counter()
    writes = runfiles.writes_files()
    with sigint_flag() as interrupted, events.epoch_events(workdir, log) as write_events:
        log(console.table_header())
        for epoch in range(start_step // steps, config.epochs):
            epoch_start = time.perf_counter()
            first = start_step - epoch * steps if epoch == start_step // steps else 0
            try:
                with console.progress_bar(epoch + 1, config.epochs, steps, first,
                                          show_progress) as bar:
                    state, host, (test_loss, test_acc) = run_epoch(state, epoch, first, partial,
                                                                   bar, interrupted)
            except NonFiniteLossError as e:  # say what is kept
                raise NonFiniteLossError(e.epoch, e.step, checkpoint.latest_step(ckpt_dir)) from None
            partial = None
            train_loss, train_acc = summarize(host)
            row = {
                "epoch": epoch + 1,
                "lr": float(schedule(int(state.step) - 1)),
                "train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(row)
            # The checkpoint first: a metrics row never names an epoch whose
            # state was not saved (a resume rewrites the rows from it).
            checkpoint.save(ckpt_dir, int(state.step), state, checkpoint_record(epoch + 1, history, None))
            runfiles.append_metrics(workdir, row)
            if writes:
                write_events(row, steps - first)
            log(console.table_row(row))
            if interrupted["set"] and epoch + 1 < config.epochs:  # after the last: done anyway
                raise Interrupted(int(state.step), workdir, signum=interrupted["signum"])
    log(console.final_line(history, time.perf_counter() - run_start))
    return history


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


# Each returns ``run_epoch(state, epoch, first, partial, bar, interrupted) ->
# (state, train metric sums on the host, (test loss, test accuracy))``:
# one epoch from step ``first`` on, the BN re-estimation and the evaluation.


def _epoch_per_call(config, mesh, train_split, test_split, state, dropout_key, start_step,
                    stats_fn, calibration, ckpt_dir, history, log):
    """``--pipeline scan``: one compiled program per epoch (compiled here,
    ahead of the loop, so the run can say how long compiling took)."""
    replicated = parallel.replicated(mesh)
    source = device_train_data(config, train_split, replicated)
    test = jax.device_put(data.eval_batches(test_split, batch_size=config.eval_batch_size),
                          parallel.stacked_batch_sharded(mesh))
    program = jit_epoch_program(stats_fn, config.eval_batch_size, mesh)
    t = time.perf_counter()
    whole_epoch = program.lower(state, source, dropout_key, np.int32(0), calibration,
                                test).compile()
    log(f"compiled the epoch program in {time.perf_counter() - t:.1f} s")

    def run_epoch(state, epoch, first, partial, bar, interrupted):
        args = (state, source, dropout_key, np.int32(epoch), calibration, test)
        state, train_totals, test_totals = (
            whole_epoch(*args) if first == 0 else program(*args, first=first))
        host, test_host = jax.device_get((train_totals, test_totals))
        if partial:
            host = combine_metrics(host, partial)  # the interrupted epoch's earlier steps
        _check_finite(host, epoch)
        bar.update(source.steps - first)
        return state, host, summarize(test_host)

    return run_epoch


def _steps_per_call(config, mesh, train_split, test_split, state, dropout_key, start_step,
                    stats_fn, calibration, ckpt_dir, history, log):
    """``--pipeline tfds`` or ``device``: ``config.steps_per_call`` steps per
    compiled call, metrics fetched every ``FETCH_EVERY`` steps, Ctrl-C saved
    at the step it came."""
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    p_train_steps, p_eval_step = jit_steps(mesh)
    test_batches = device_eval_batches(test_split, config.eval_batch_size, sharded)
    batches = training_batches(config, train_split, start_step, sharded, replicated)
    steps = data.steps_per_epoch(len(train_split), config.batch_size)

    def run_epoch(state, epoch, first, partial, bar, interrupted):
        totals = jax.device_put(partial if partial else zero_totals(), replicated)
        calls = epoch_calls(first, steps, config.steps_per_call)
        for state, totals, n, last, fetch in step_through(p_train_steps, state, batches,
                                                          dropout_key, totals, calls):
            bar.update(n)
            if interrupted["set"] or fetch:
                host = jax.device_get(totals)
                _check_finite(host, epoch)
                loss, acc = summarize(host)
                bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}")
            if interrupted["set"] and not last:
                checkpoint.save(ckpt_dir, int(state.step), state, checkpoint_record(epoch, history, host))
                raise Interrupted(int(state.step), ckpt_dir.parent, signum=interrupted["signum"])
        if stats_fn is not None:
            state = state.replace(batch_stats=precise_batch_stats(
                stats_fn, state, calibration, config.eval_batch_size))
        return state, host, evaluate(p_eval_step, state, test_batches)

    return run_epoch
