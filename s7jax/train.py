"""Training and evaluation: pure, jit-compiled steps and the epoch loop.

``train_step`` and ``eval_step`` are pure functions of their arguments,
compiled once by ``jax.jit``; the same code runs on CPU, GPU and TPU, and on
several devices at once when the batch is sharded over a mesh (see
``s7jax.parallel``). ``train_and_evaluate`` is the whole run: data, state,
the epoch loop, metrics, checkpoints.
"""

from __future__ import annotations

import contextlib
import signal
import time
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from s7jax import checkpoint, console, data, parallel, runfiles
from s7jax.config import Config
from s7jax.errors import Interrupted, NonFiniteLossError
from s7jax.models import get_model, init_variables

# Keys of the "rbg" generator (XLA's RngBitGenerator): on CPU, threefry's
# hash makes the model's init take ~20 s to compile and the train step ~3x
# longer to compile, and its dropout masks cost ~30% of a model6 step.
PRNG_IMPL = "rbg"

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus the BatchNorm running statistics."""

    batch_stats: Any


# --------------------------------------------------------------------------
# State and optimiser
# --------------------------------------------------------------------------


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    div_factor = 25.0  # start at peak / 25, as PyTorch's OneCycleLR
    return optax.cosine_onecycle_schedule(
        transition_steps=config.epochs * steps_per_epoch,
        peak_value=config.lr,
        pct_start=config.warmup_fraction,
        div_factor=div_factor,
        final_div_factor=1.0 / (div_factor * config.final_lr_fraction),
    )


def make_optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    if config.optimizer == "adam":
        return optax.adamw(schedule, weight_decay=config.weight_decay)
    sgd = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay:
        # PyTorch's SGD weight_decay: the decay joins the gradient before momentum.
        return optax.chain(optax.add_decayed_weights(config.weight_decay), sgd)
    return sgd


def create_train_state(model: nn.Module, key: jax.Array, tx: optax.GradientTransformation) -> TrainState:
    variables = init_variables(model, key)
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx)


def initial_state(config: Config, schedule: optax.Schedule) -> tuple[TrainState, jax.Array]:
    """The freshly initialised state of a run, and its base dropout key: both
    functions of ``config.seed`` alone."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed, impl=PRNG_IMPL))
    model = get_model(config.model)
    return create_train_state(model, init_key, make_optimizer(config, schedule)), dropout_key


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


def metric_sums(log_probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> Metrics:
    """Sums (not means) so that epoch figures are exact over any batching."""
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    correct = jnp.argmax(log_probs, axis=-1) == labels
    weight = jnp.ones_like(nll) if mask is None else mask.astype(nll.dtype)
    return {
        "loss": jnp.sum(nll * weight),
        "correct": jnp.sum(correct * weight).astype(jnp.int32),
        "count": jnp.sum(weight).astype(jnp.int32),
    }


def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
    """One SGD step on the mean NLL. Dropout draws from ``fold_in(key, step)``,
    so the randomness is a function of the step alone (resumable, reproducible)."""
    dropout_key = jax.random.fold_in(key, state.step)

    def loss_fn(params):
        log_probs, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_key})
        nll = -jnp.take_along_axis(log_probs, batch["label"][:, None], axis=1)
        return jnp.mean(nll), (log_probs, updates)

    (loss, (log_probs, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get("batch_stats", state.batch_stats))
    metrics = metric_sums(log_probs, batch["label"])
    # The step of a non-finite loss (-1 if finite), to name it in the error.
    metrics["nonfinite_step"] = jnp.where(jnp.isfinite(loss), -1, state.step - 1).astype(jnp.int32)
    return state, metrics


def train_steps(state: TrainState, batches: tuple[Batch, ...], key: jax.Array
                ) -> tuple[TrainState, Metrics]:
    """``len(batches)`` train steps in one call, metrics summed. One batch
    compiles to exactly ``train_step``; with several, each call dispatches
    once and XLA schedules and fuses across the steps: faster on CPU, the same
    maths with different float rounding (``Config.steps_per_call``)."""
    state, totals = train_step(state, batches[0], key)
    for batch in batches[1:]:
        state, metrics = train_step(state, batch, key)
        totals = combine_metrics(totals, metrics)
    return state, totals


def eval_step(state: TrainState, batch: Batch) -> Metrics:
    """Metric sums over the unmasked examples, with the running BN statistics."""
    log_probs = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                               batch["image"], train=False)
    return metric_sums(log_probs, batch["label"], batch["mask"])


def combine_metrics(totals: Metrics, metrics: Metrics) -> Metrics:
    """Metric sums of two spans of steps; the first non-finite step wins."""
    out = {k: totals[k] + metrics[k] for k in ("loss", "correct", "count")}
    if "nonfinite_step" in totals:
        first = totals["nonfinite_step"]
        out["nonfinite_step"] = jnp.where(first >= 0, first, metrics["nonfinite_step"])
    return out


accumulate = jax.jit(combine_metrics)


FETCH_EVERY = 50  # steps between looks at the metrics: often enough, without stalling the device


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


def zero_totals() -> dict[str, np.ndarray]:
    return {"loss": np.float32(0), "correct": np.int32(0), "count": np.int32(0),
            "nonfinite_step": np.int32(-1)}


def summarize(totals: dict[str, Any]) -> tuple[float, float]:
    """(mean loss, accuracy in percent) from metric sums."""
    count = max(int(totals["count"]), 1)
    return float(totals["loss"]) / count, 100.0 * int(totals["correct"]) / count


def device_eval_batches(split: data.Split, batch_size: int, sharding=None) -> list[Batch]:
    """The test set is small: put it on the device(s) once for every evaluation."""
    return [jax.device_put(b, sharding)
            for b in data.as_numpy(data.eval_dataset(split, batch_size=batch_size))]


def evaluate(eval_fn: Callable, state: TrainState, batches: list[Batch]) -> tuple[float, float]:
    """(mean loss, accuracy %) of ``state`` over every unmasked example."""
    totals = {k: v for k, v in zero_totals().items() if k != "nonfinite_step"}
    for batch in batches:
        totals = accumulate(totals, eval_fn(state, batch))
    return summarize(jax.device_get(totals))


# --------------------------------------------------------------------------
# BatchNorm re-estimation ("precise BN")
# --------------------------------------------------------------------------


def make_batch_stats_fn(model: nn.Module) -> Callable:
    """A jitted ``(variables, images) -> batch_stats`` giving each BN layer the
    exact mean and variance of this batch, with dropout off.

    Training collects running statistics on augmented images with dropout on,
    while evaluation sees clean images with dropout off; re-estimating them on
    clean training images closes that gap. Setting momentum 0 makes the
    "running" average the batch's own statistics.
    """
    fields = {"bn_momentum": 0.0}
    if hasattr(model, "dropout_rate"):
        fields["dropout_rate"] = 0.0
    probe = model.clone(**fields)

    @jax.jit
    def batch_stats(variables, images):
        _, updates = probe.apply(variables, images, train=True, mutable=["batch_stats"])
        return updates["batch_stats"]

    return batch_stats


def precise_batch_stats(stats_fn: Callable, state: TrainState, images: jax.Array,
                        chunk: int) -> Any:
    """Population BN statistics over ``images`` (normalised), in chunks:
    the mean of the chunk means, and E[x^2] - E[x]^2 for the variance."""
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    chunks = [stats_fn(variables, images[i:i + chunk]) for i in range(0, len(images), chunk)]

    def combine(*layers):
        mean = sum(layer["mean"] for layer in layers) / len(layers)
        second = sum(layer["var"] + layer["mean"] ** 2 for layer in layers) / len(layers)
        return {"mean": mean, "var": second - mean ** 2}

    is_layer = lambda x: isinstance(x, dict) and set(x) == {"mean", "var"}  # noqa: E731
    return jax.tree.map(combine, *chunks, is_leaf=is_layer)


# --------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------


def calibration_images(split: data.Split, n: int, seed: int) -> np.ndarray:
    """``n`` clean, normalised training images (a fixed random subset) for
    re-estimating the BN statistics."""
    pick = np.sort(np.random.default_rng(seed).permutation(len(split))[:n])
    return ((split.images[pick] / 255.0 - data.MEAN) / data.STD).astype(np.float32)


def training_batches(config: Config, split: data.Split, start_step: int, sharding, replicated):
    """The run's training batches from ``start_step`` on, on the device(s):
    from tf.data on the host, or made on the device (``config.pipeline``)."""
    common = dict(batch_size=config.batch_size, seed=config.seed, augment=config.augment,
                  epochs=config.epochs, clean_epochs=config.clean_epochs)
    if config.pipeline == "device":
        return data.DeviceTrainData(split, sharding=sharding, replicated=replicated,
                                    **common).batches(start_step)
    return (jax.device_put(b, sharding)
            for b in data.as_numpy(data.train_dataset(split, start_step=start_step, **common)))


@contextlib.contextmanager
def _sigint_flag():
    """Turn Ctrl-C into a flag checked between steps, so a donated state is
    never left half-updated."""
    flag = {"set": False}

    def handler(signum, frame):
        flag["set"] = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: no signal handling
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)


def _record(epoch: int, history: list, partial: dict | None) -> dict:
    partial = None if partial is None else {k: np.asarray(v).item() for k, v in partial.items()}
    return {"epoch": epoch, "history": history, "partial": partial}


def train_and_evaluate(
    config: Config,
    workdir: str | Path,
    *,
    resume: bool = False,
    mesh=None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    show_progress: bool = True,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Train ``config.model`` and evaluate it after every epoch; return the
    per-epoch metrics (also appended to ``<workdir>/metrics.jsonl``).

    With ``resume``, continue from the latest checkpoint in ``workdir``.
    """
    workdir = Path(workdir)
    mesh = parallel.make_mesh() if mesh is None else mesh
    parallel.check_divisible(config.batch_size, mesh)
    parallel.check_divisible(config.eval_batch_size, mesh, "eval batch size")
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)

    splits = data.load_mnist(data_dir, manual_dir)
    train_split = splits["train"].subset(config.train_subset)
    test_split = splits["test"].subset(config.test_subset)
    steps = data.steps_per_epoch(len(train_split), config.batch_size)

    model = get_model(config.model)
    schedule = learning_rate_schedule(config, steps)
    state, dropout_key = initial_state(config, schedule)

    history: list[dict[str, Any]] = []
    partial = None
    ckpt_dir = runfiles.checkpoint_dir(workdir)
    if resume and checkpoint.latest_step(ckpt_dir) is not None:
        state, record = checkpoint.restore(ckpt_dir, state)
        history, partial = record["history"], record["partial"]
        runfiles.write_metrics(workdir, history)
        log(f"resumed from step {int(state.step)} (epoch {record['epoch'] + 1})")
    else:
        runfiles.write_config(workdir, config)
        runfiles.write_metrics(workdir, [])
    start_step = int(state.step)
    if start_step >= config.epochs * steps:
        log("run already complete")
        return history

    state = jax.device_put(state, replicated)
    p_train_steps = jax.jit(train_steps, donate_argnums=0, out_shardings=(replicated, replicated))
    p_eval_step = jax.jit(eval_step, out_shardings=replicated)
    test_batches = device_eval_batches(test_split, config.eval_batch_size, sharded)
    if config.precise_bn:
        stats_fn = make_batch_stats_fn(model)
        calibration = jax.device_put(calibration_images(train_split, config.precise_bn, config.seed))
    batches = training_batches(config, train_split, start_step, sharded, replicated)

    run_start = time.perf_counter()
    with _sigint_flag() as interrupted:
        log(console.table_header())
        for epoch in range(start_step // steps, config.epochs):
            epoch_start = time.perf_counter()
            first = start_step - epoch * steps if epoch == start_step // steps else 0
            totals = jax.device_put(partial if partial else zero_totals(), replicated)
            partial = None
            with console.progress_bar(epoch + 1, config.epochs, steps, first, show_progress) as bar:
                for n, last, fetch in epoch_calls(first, steps, config.steps_per_call):
                    group = tuple(next(batches) for _ in range(n))
                    state, metrics = p_train_steps(state, group, dropout_key)
                    totals = accumulate(totals, metrics)
                    bar.update(n)
                    if interrupted["set"] or fetch:
                        host = jax.device_get(totals)
                        if host["nonfinite_step"] >= 0:
                            raise NonFiniteLossError(epoch + 1, int(host["nonfinite_step"]))
                        loss, acc = summarize(host)
                        bar.set_postfix(loss=f"{loss:.4f}", acc=f"{acc:.2f}")
                    if interrupted["set"] and not last:
                        checkpoint.save(ckpt_dir, int(state.step), state,
                                        _record(epoch, history, host))
                        raise Interrupted(int(state.step), workdir)
            train_loss, train_acc = summarize(host)
            if config.precise_bn:
                state = state.replace(
                    batch_stats=precise_batch_stats(stats_fn, state, calibration, config.eval_batch_size))
            test_loss, test_acc = evaluate(p_eval_step, state, test_batches)
            row = {
                "epoch": epoch + 1,
                "lr": float(schedule(int(state.step) - 1)),
                "train_loss": train_loss, "train_acc": train_acc,
                "test_loss": test_loss, "test_acc": test_acc,
                "seconds": time.perf_counter() - epoch_start,
            }
            history.append(row)
            runfiles.append_metrics(workdir, row)
            checkpoint.save(ckpt_dir, int(state.step), state, _record(epoch + 1, history, None))
            log(console.table_row(row))
            if interrupted["set"]:
                raise Interrupted(int(state.step), workdir)
    log(console.final_line(history, time.perf_counter() - run_start))
    return history
