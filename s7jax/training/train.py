"""A training run: its settings resolved, its folder claimed, its epochs.

Step by step (``tfds``, ``device``: the CPU default, as fast there as an
epoch per call) or an epoch per call (``scan``: the GPU and TPU default,
where Python's dispatch per step would set the pace); or several seeds as
one program (``s7jax.training.seeds``), with the same set-up."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax

from s7jax import data
from s7jax.config import TRAIN_IMAGES, Config, validate
from s7jax.errors import CheckpointError, ConfigError, Interrupted, Terminated
from s7jax.models import get_model
from s7jax.runs import checkpoint, recorder, runfiles, runlock, weights
from s7jax.training import console, loops, parallel
from s7jax.training.loops import stack, unstack
from s7jax.training.steps import initial_state, learning_rate_schedule


def resolve(config: Config, backend: str | None = None) -> Config:
    """``config`` with its ``auto`` settings decided for this machine, as the run records them
    in ``config.json`` (so that a repeat takes the same path). The pipeline: ``scan`` on an
    accelerator, ``device`` on a CPU. The data source: TFDS for the tf.data pipeline, else
    the IDX files, read with numpy without TensorFlow's runtime in the process."""
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
    # validate again: auto may have become scan, which takes no --steps-per-call.
    return validate(dataclasses.replace(config, data_source=source, pipeline=pipeline))


def matmul_precision(config: Config):
    """Tracing with ``Config.matmul_precision`` (``default``: JAX's per-backend one)."""
    if config.matmul_precision == "default":
        return contextlib.nullcontext()
    return jax.default_matmul_precision(config.matmul_precision)


def _describe_source(config: Config, data_dir, manual_dir) -> str:
    if config.data_source == "tfds":
        return f"MNIST through TFDS (data_dir {data_dir or 'TFDS default'})"
    return (f"MNIST from the IDX files in {manual_dir or data.default_manual_dir()} "
            "(read with numpy, without TensorFlow)")


def train_and_evaluate(config: Config, workdir: str | Path, **kwargs) -> list[dict[str, Any]]:
    """Train and evaluate after every epoch; the rows of ``metrics.jsonl``
    (keywords: :func:`train_runs`'s)."""
    return train_runs([config], [workdir], **kwargs)[0]


def train_runs(
    configs: Sequence[Config], workdirs: Sequence[str | Path], *, strategy: str | None = None,
    resume: bool = False, overwrite: bool = False, mesh=None, data_dir: str | None = None,
    manual_dir: str | None = None, show_progress: bool = True,
    log: Callable[[str], None] = print, on_start: Callable[[], None] | None = None,
    refusal_advice: str | None = None, load_data: Callable[[Config], loops.RunData] | None = None,
    checkpoint_every: int = 1, how: str | None = None,
) -> list[list[dict[str, Any]]]:
    """Train ``configs[i]`` into ``workdirs[i]``: one run, or with ``strategy``
    (vmap or map) seeds of one config as one program; each run's rows. What
    needs no data is checked first, so that its errors come at once (the batch
    against the devices, the folders, the checkpoints and their configs); only
    then ``on_start()`` (the scripts' banner), the ``auto`` settings and the data
    (``load_data``: a sweep's, shared). ``checkpoint_every`` epochs a checkpoint
    (and after the last, and on Ctrl-C); ``how``: how to resume, for the error."""
    together = strategy is not None
    if not configs or len(configs) != len(workdirs) or len(configs) > 1 and not together:
        raise ConfigError("give one workdir per config: one, or with a strategy, one per seed")
    if strategy not in (None, "vmap", "map"):
        raise ConfigError(f"seeds in one program: vmap or map, not {strategy!r}")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    config = configs[0]
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_divisible(config.batch_size, mesh)  # before the folder is touched
    parallel.check_divisible(config.eval_batch_size, mesh, "eval batch size")
    # Built once, before the data is read (a resume restores into them).
    model = get_model(config.model)
    schedule = learning_rate_schedule(config, data.steps_per_epoch(
        config.train_subset or TRAIN_IMAGES, config.batch_size))
    if "tfds" in (config.pipeline, config.data_source) and not data.tfds_installed():
        resolve(config)  # its refusal, before the folder, the banner and a TensorFlow start
    with contextlib.ExitStack() as held:
        workdirs = [held.enter_context(runlock.claim(w, resume=resume, overwrite=overwrite,
                                                     advice=refusal_advice)) for w in workdirs]
        held.enter_context(matmul_precision(config))
        starts = [starting_point(c, model, schedule, w, resume, log)
                  for c, w in zip(configs, workdirs, strict=True)]
        start_step, partial = int(starts[0][0].step), starts[0][3]
        if together and any(int(s.step) != start_step or p for s, _, _, p in starts):
            raise CheckpointError(
                f"seeds {', '.join(str(c.seed) for c in configs)} stopped at different steps, so "
                "they cannot go on as one program; run the sweep with --strategy sequential")
        if on_start is not None:
            on_start()
        data.check_files(config.data_source, data_dir, manual_dir)  # before TensorFlow loads
        configs = [resolve(c) for c in configs]
        config = configs[0]
        log(_describe_source(config, data_dir, manual_dir))
        run_data = (load_data(config) if load_data else
                    loops.RunData.load(config, data_dir, manual_dir))
        histories = [history for _, _, history, _ in starts]
        for c, workdir, (state, _, history, _) in zip(configs, workdirs, starts):
            if history or int(state.step):  # a resumed run: its checkpointed rows
                runfiles.write_metrics(workdir, history)
            else:
                runfiles.write_config(workdir, c)
                runfiles.write_metrics(workdir, [])
        if start_step >= config.epochs * run_data.steps:
            log("run already complete")
            for i, (c, workdir) in enumerate(zip(configs, workdirs)):  # a kill may have come first
                export_weights(workdir, c, starts[i][0], histories[i], how)
            return histories
        state, dropout_key = ((stack([s[0] for s in starts]), stack([s[1] for s in starts]))
                              if together else starts[0][:2])
        state = jax.device_put(state, parallel.replicated(mesh))
        ctx = loops.RunContext.create(config, mesh, run_data, model, dropout_key,
                                      seeds=[c.seed for c in configs] if together else None,
                                      strategy=strategy or "vmap")
        if not together:
            log(f"pipeline {config.pipeline}: " + (
                "one compiled call per epoch (train steps, BN re-estimation, evaluation)"
                if config.pipeline == "scan" else
                f"{config.steps_per_call} train step(s) per compiled call, "
                f"batches {'made on the device' if config.pipeline == 'device' else 'from tf.data'}"))
        before_compile = time.perf_counter()
        interrupted = recorder.unset_flag()
        records = [held.enter_context(recorder.recording(
            w, h, log, prefix=f"{c.seed:>4}  " * together, config=c))
            for c, w, h in zip(configs, workdirs, histories)]
        # Made (and, for scan, compiled) before signals are caught: until the
        # first step, Ctrl-C stops the run at once.
        run_epoch = (loops.EpochPerCall(ctx, state, log) if config.pipeline == "scan"
                     else loops.StepByStep(ctx, start_step, records[0], interrupted))
        # A single run's final line counts its compile; the seeds' line counts
        # their epochs only (the compile has a line of its own).
        run_start = time.perf_counter() if together else before_compile
        state = loops.record_epochs(
            records, run_epoch, state, epochs=config.epochs, steps=run_data.steps, lr=schedule,
            show_progress=show_progress, start_step=start_step, partial=partial,
            stacked=together, checkpoint_every=checkpoint_every, interrupted=interrupted, how=how)
        for i, (c, workdir) in enumerate(zip(configs, workdirs)):
            export_weights(workdir, c, unstack(state, i) if together else state, histories[i], how)
        seconds = time.perf_counter() - run_start
        log(f"{len(configs)} seeds, {config.epochs} epochs in {seconds:.1f} s" if together
            else console.final_line(histories[0], seconds))
    return histories


def export_weights(workdir: Path, config: Config, state, history: list, how=None) -> None:
    """``weights.msgpack`` of the last checkpoint's state (a resume exports it again)."""
    try:
        if runfiles.writes_files():
            weights.export_state(workdir, config, state, history)
    except (KeyboardInterrupt, Terminated) as e:
        raise Interrupted(int(state.step), workdir, how,
                          signum=15 if isinstance(e, Terminated) else 2) from None


def starting_point(config: Config, model: nn.Module, schedule, workdir: Path, resume: bool,
                    log: Callable[[str], None]):
    """``(state, dropout key, history, partial epoch's sums)``: fresh, or with
    ``resume`` the latest intact checkpoint. A folder whose recorded epochs no
    checkpoint can continue is refused, untouched (a run under ``results/``
    keeps its metrics, not its checkpoints)."""
    ckpt_dir = runfiles.checkpoint_dir(workdir)
    restoring = resume and checkpoint.latest_step(ckpt_dir) is not None
    if resume and not restoring:
        recorded = runfiles.read_metrics(workdir)
        if recorded:
            raise CheckpointError(
                f"--resume {workdir}: no checkpoint in {ckpt_dir} to continue its "
                f"{len(recorded)} recorded epoch(s) from; the run is left as it was (to train it "
                "again, use scripts/reproduce.py or a new --workdir)")
    state, dropout_key = initial_state(config, schedule, model)
    if not restoring:  # a new run, or one that saved nothing yet: from the start
        return state, dropout_key, [], None
    state, record = checkpoint.restore(ckpt_dir, state, log=log)
    _check_config(record.get("config"), workdir, int(state.step))
    log(f"resumed from step {int(state.step)} (epoch {record['epoch'] + 1})")
    return state, dropout_key, record["history"], record["partial"]


def _check_config(saved: dict | None, workdir: Path, step: int) -> None:
    """Refuse a checkpoint of another config (an older one, without a record of it, is trusted)."""
    now = json.loads(json.dumps(runfiles.read_config(workdir).to_json()))  # tuples as saved
    changed = [f"{k} {v!r} (config.json: {now.get(k)!r})" for k, v in sorted((saved or {}).items())
               if now.get(k) != v]
    if changed:
        raise CheckpointError(f"--resume {workdir}: its checkpoint step {step} was made with "
                              f"another config: {', '.join(changed)}; the run is left as it was")
