"""Many seeds in one program: ``jax.vmap`` over whole training runs.

``train_seeds`` trains N seeds of one config together. The epoch program of
``--pipeline scan`` (``s7jax.training.steps.epoch_program``: the epoch's steps, the BN
re-estimation, the evaluation) is vmapped over a leading seed axis of

* the train state (parameters, BatchNorm statistics, optimiser state), each
  seed's initialised exactly as its own run initialises it;
* the dropout key and the data keys (``data.DeviceTrainData``: the epoch's
  order and each step's augmentation), whose random draws stay those of the
  seed's own run under vmap (``s7jax.models.seedwise``);
* the BN calibration images, each seed's own subset;

while the training images and the test set are shared. So seed ``s`` trains
what ``scripts/train.py --pipeline scan --seed s`` trains, up to the float
rounding of a batched program (tested), and writes the same files into its
own folder. Each epoch is one dispatch for all seeds.

Layout on several devices: the seed axis stays whole on every device and
each seed's batch is split over the mesh's ``data`` axis, as in a single run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from s7jax import data
from s7jax.runs import checkpoint, recorder, runfiles, runlock, weights
from s7jax.training import console, loops, parallel
from s7jax.config import Config
from s7jax.errors import ConfigError, NonFiniteLossError
from s7jax.models import INPUT_SHAPE, count_params, get_model, init_variables
from s7jax.training.steps import (epoch_program, initial_state, learning_rate_schedule, make_batch_stats_fn,
                         mean_loss_and_accuracy)
from s7jax.training.train import matmul_precision, resolve

# Only a share of the memory JAX may use goes to the seeds' copies: XLA needs
# room for its temporaries.
MEMORY_SHARE = 0.5


def stack(trees: Sequence[Any]) -> Any:
    """Trees of one shape -> one tree with a leading axis (static fields, such
    as each train state's own optimiser object, taken from the first)."""
    leaves = [jax.tree.leaves(t) for t in trees]
    return jax.tree.unflatten(jax.tree.structure(trees[0]),
                              [jnp.stack(xs) for xs in zip(*leaves, strict=True)])


def unstack(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], tree)


def bytes_per_seed(config: Config) -> int:
    """A generous estimate of what one more seed costs in device memory:
    its state (parameters, gradients, momentum: 4 copies in float32), and the
    activations of one training batch kept for the backward pass (every
    layer's output, 3 float32 copies: value, mask, gradient)."""
    model = get_model(config.model)
    variables = init_variables(model, jax.random.key(0, impl="rbg"))
    _, state = model.apply(variables, jnp.zeros((1, *INPUT_SHAPE)), train=False,
                           capture_intermediates=True, mutable=["intermediates"])
    per_image = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["intermediates"]))
    return 16 * count_params(variables) + 12 * per_image * config.batch_size


def memory_limit() -> int:
    """Bytes JAX may use on the first device (its reported limit on an
    accelerator; physical memory on a CPU)."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(config: Config, n: int) -> None:
    per_seed, limit = bytes_per_seed(config), memory_limit()
    need = n * per_seed
    if need > MEMORY_SHARE * limit:
        fits = max(int(MEMORY_SHARE * limit // per_seed), 0)
        raise ConfigError(
            f"{n} seeds of {config.model} together need about {need / 2**30:.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of the {limit / 2**30:.1f} GiB this device offers; train at most "
            f"{fits} together, or one after another (without --together)")


def jit_seeds_program(stats_fn, eval_batch_size: int, mesh, source_axes) -> Callable:
    """The epoch program of ``--pipeline scan`` vmapped over the seed axis
    (``source_axes``: ``DeviceTrainData.for_seeds``'s), jitted for ``mesh``.
    The calibration images carry a seed axis when ``stats_fn`` is given."""
    replicated = parallel.replicated(mesh)
    run = epoch_program(stats_fn, eval_batch_size, parallel.batch_sharded(mesh))
    in_axes = (0, source_axes, 0, None, 0 if stats_fn is not None else None, None)
    return jax.jit(jax.vmap(run, in_axes=in_axes), donate_argnums=0,
                   out_shardings=(replicated, replicated, replicated))


def train_seeds(
    config: Config,
    seeds: Sequence[int],
    workdirs: Sequence[str | Path],
    *,
    mesh=None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    overwrite: bool = False,
    refusal_advice: str | None = None,
    show_progress: bool = True,
    checkpoint_every: int = 1,
    log: Callable[[str], None] = print,
) -> dict[int, list[dict[str, Any]]]:
    """Train ``config`` for every seed in ``seeds`` as one vectorised program,
    seed ``seeds[i]`` into ``workdirs[i]`` (folders claimed as a single run
    claims its own: one that holds a run is refused unless ``overwrite``);
    return each seed's per-epoch metrics.

    Each seed's checkpoint and metrics rows are written every
    ``checkpoint_every`` epochs, after the last and on Ctrl-C: many seeds
    write many checkpoints, and on an accelerator writing them can take longer
    than training. A resume starts from the last one written."""
    if len(seeds) != len(workdirs) or not seeds:
        raise ConfigError("give one workdir per seed, and at least one seed")
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    data.check_files(config.data_source, data_dir, manual_dir)  # before TensorFlow loads
    configs = [resolve(dataclasses.replace(config, seed=s, pipeline="scan", steps_per_call=1))
               for s in seeds]
    check_memory(configs[0], len(seeds))
    with contextlib.ExitStack() as claims:
        dirs = [claims.enter_context(runlock.claim(w, overwrite=overwrite, advice=refusal_advice))
                for w in workdirs]
        claims.enter_context(matmul_precision(configs[0]))
        return _train(configs, dirs, mesh, data_dir, manual_dir, show_progress, checkpoint_every,
                      log)


def _train(configs, workdirs, mesh, data_dir, manual_dir, show_progress, checkpoint_every, log):
    config = configs[0]
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_divisible(config.batch_size, mesh)
    parallel.check_divisible(config.eval_batch_size, mesh, "eval batch size")
    replicated = parallel.replicated(mesh)

    run_data = loops.RunData.load(config, data_dir, manual_dir)
    steps = run_data.steps
    schedule = learning_rate_schedule(config, steps)

    # Each seed's state and keys exactly as its own run makes them, then stacked.
    states, dropout_keys, calibrations = [], [], []
    for c, workdir in zip(configs, workdirs):
        state, key = initial_state(c, schedule)
        states.append(state)
        dropout_keys.append(key)
        if c.precise_bn:
            calibrations.append(loops.calibration_images(run_data.train, c.precise_bn, c.seed))
        runfiles.write_config(workdir, c)
        runfiles.write_metrics(workdir, [])
    state = jax.device_put(stack(states), replicated)
    keys = stack(dropout_keys)
    source, source_axes = loops.device_train_data(config, run_data.train, replicated).for_seeds(
        [c.seed for c in configs])
    calibration = jax.device_put(np.stack(calibrations), replicated) if calibrations else None
    test = loops.stacked_test_set(run_data.test, config.eval_batch_size, mesh)

    stats_fn = make_batch_stats_fn(get_model(config.model)) if config.precise_bn else None
    program = jit_seeds_program(stats_fn, config.eval_batch_size, mesh, source_axes)
    whole_epoch = loops.compiled(program, (state, source, keys, np.int32(0), calibration, test),
                                 log, f"{len(configs)} seeds of {config.model} in one program "
                                      "(jax.vmap); ")

    histories: list[list[dict[str, Any]]] = [[] for _ in configs]
    run_start = time.perf_counter()
    with contextlib.ExitStack() as held:
        interrupted = held.enter_context(recorder.interrupt_flag())
        records = [held.enter_context(recorder.recording(w, h, log, prefix=f"{c.seed:>4}  "))
                   for c, w, h in zip(configs, workdirs, histories)]
        log(f"{'seed':>4}  {console.table_header()}")
        for epoch in range(config.epochs):
            epoch_start = time.perf_counter()
            with console.progress_bar(epoch + 1, config.epochs, steps, 0, show_progress) as bar:
                state, train_totals, test_totals = whole_epoch(state, source, keys,
                                                               np.int32(epoch), calibration, test)
                train_host, test_host = jax.device_get((train_totals, test_totals))
                bar.update(steps)
            seconds = time.perf_counter() - epoch_start  # shared by the seeds trained in it
            step = (epoch + 1) * steps
            save = ((epoch + 1) % checkpoint_every == 0 or epoch + 1 == config.epochs
                    or interrupted["set"])
            for i, record in enumerate(records):
                host = unstack(train_host, i)
                if host["nonfinite_step"] >= 0:
                    raise NonFiniteLossError(epoch + 1, int(host["nonfinite_step"]),
                                             checkpoint.latest_step(record.checkpoint_dir))
                row = recorder.metrics_row(epoch + 1, float(schedule(step - 1)),
                                           mean_loss_and_accuracy(host),
                                           mean_loss_and_accuracy(unstack(test_host, i)), seconds)
                record.end_epoch(row, steps, state=unstack(state, i) if save else None, step=step)
            recorder.stop_if_interrupted(
                interrupted, epoch + 1, config.epochs, step, workdirs[0].parent,
                how="run the same sweep again: it resumes each seed's folder")
    if runfiles.writes_files():
        for i, (c, workdir) in enumerate(zip(configs, workdirs)):
            weights.export_state(workdir, c, unstack(state, i), histories[i])
    log(f"{len(configs)} seeds, {config.epochs} epochs in {time.perf_counter() - run_start:.1f} s")
    return {c.seed: h for c, h in zip(configs, histories)}
