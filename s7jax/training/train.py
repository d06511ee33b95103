"""A training run: its settings resolved, its folder claimed, its epochs.

``train_and_evaluate`` claims the run's folder (``s7jax.runs.runlock``), starts
fresh or from the latest checkpoint, and runs the epochs through one of the
two loops of ``s7jax.training.loops``, chosen by ``Config.pipeline`` (``auto``: by the
backend):

* **step by step** (``tfds``, ``device``): one compiled call per train step
  (or per ``--steps-per-call`` steps); a progress bar that moves with the
  steps; Ctrl-C honoured between steps. The CPU default (``device``): on
  XLA:CPU it is as fast as one call per epoch, and every run under
  ``results/`` was trained this way, bit for bit repeatable.
* **an epoch per call** (``scan``): the epoch's steps, the BN re-estimation
  and the evaluation of the test set in one compiled program: one dispatch
  and one small fetch per epoch. The GPU and TPU default, where a model6 step
  is a fraction of a millisecond and Python dispatch would set the pace.

Each epoch ends in ``s7jax.runs.recorder``: the same files, table and checkpoint
whichever loop trained it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import jax

from s7jax import data
from s7jax.runs import checkpoint, recorder, runfiles, runlock, weights
from s7jax.training import console, loops, parallel
from s7jax.config import TRAIN_IMAGES, Config
from s7jax.errors import CheckpointError, ConfigError, NonFiniteLossError
from s7jax.models import get_model
from s7jax.training.steps import initial_state, learning_rate_schedule, make_batch_stats_fn, mean_loss_and_accuracy


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
    the batch against the devices, then the folder (``s7jax.runs.runlock.claim``:
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
    with runlock.claim(workdir, resume=resume, overwrite=overwrite,
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
    log(_describe_source(config, data_dir, manual_dir))
    run_data = loops.RunData.load(config, data_dir, manual_dir)
    steps = run_data.steps
    schedule = learning_rate_schedule(config, steps)
    state, dropout_key, history, partial = start
    if history or int(state.step):
        runfiles.write_metrics(workdir, history)  # the rows of the checkpoint's epochs
    else:
        runfiles.write_config(workdir, config)
        runfiles.write_metrics(workdir, [])
    start_step = int(state.step)
    if start_step >= config.epochs * steps:
        log("run already complete")
        return history

    replicated = parallel.replicated(mesh)
    state = jax.device_put(state, replicated)
    calibration = (jax.device_put(loops.calibration_images(run_data.train, config.precise_bn,
                                                           config.seed), replicated)
                   if config.precise_bn else None)
    log(f"pipeline {config.pipeline}: " + (
        "one compiled call per epoch (train steps, BN re-estimation, evaluation)"
        if config.pipeline == "scan" else
        f"{config.steps_per_call} train step(s) per compiled call, "
        f"batches {'made on the device' if config.pipeline == 'device' else 'from tf.data'}"))

    run_start = time.perf_counter()
    interrupted = recorder.unset_flag()
    with recorder.recording(workdir, history, log) as record:
        ctx = loops.RunContext(
            config, mesh, run_data, dropout_key,
            make_batch_stats_fn(get_model(config.model)) if config.precise_bn else None,
            calibration, record, interrupted)
        # Made (and, for scan, compiled) before signals are caught: until the
        # first step, Ctrl-C stops the run at once.
        run_epoch = (loops.EpochPerCall(ctx, state, log) if config.pipeline == "scan"
                     else loops.StepByStep(ctx, start_step))
        with recorder.interrupt_flag(interrupted):
            state = _epochs(ctx, run_epoch, state, start_step, partial, schedule, show_progress)
    if runfiles.writes_files():
        weights.export_state(workdir, config, state, history)
    log(console.final_line(history, time.perf_counter() - run_start))
    return history


def _epochs(ctx: loops.RunContext, run_epoch: Callable, state, start_step: int,
            partial: dict | None, schedule, show_progress: bool):
    """The run's epochs from ``start_step`` on, each recorded as it ends;
    the state after the last."""
    config, steps, record = ctx.config, ctx.data.steps, ctx.recorder
    record.log(console.table_header())
    for epoch in range(start_step // steps, config.epochs):
        epoch_start = time.perf_counter()
        first = start_step - epoch * steps if epoch == start_step // steps else 0
        try:
            with console.progress_bar(epoch + 1, config.epochs, steps, first,
                                      show_progress) as bar:
                state, host, test = run_epoch(state, epoch, first, partial, bar)
        except NonFiniteLossError as e:  # say what is kept
            raise NonFiniteLossError(e.epoch, e.step,
                                     checkpoint.latest_step(record.checkpoint_dir)) from None
        partial = None
        step = int(state.step)
        row = recorder.metrics_row(epoch + 1, float(schedule(step - 1)),
                                   mean_loss_and_accuracy(host), test,
                                   time.perf_counter() - epoch_start)
        record.end_epoch(row, steps - first, state=state, step=step)
        recorder.stop_if_interrupted(ctx.interrupted, epoch + 1, config.epochs, step,
                                     record.workdir)
    return state
