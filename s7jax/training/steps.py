"""The pure pieces of training: state, steps, BN re-estimation, an epoch as
one program. They run unchanged on CPU, GPU, TPU and sharded over a mesh."""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct
from flax.training import train_state

from s7jax.config import Config
from s7jax.models import INPUT_SHAPE, get_model, init_variables

# Keys of the "rbg" generator (XLA's RngBitGenerator): on CPU, threefry's
# hash makes the model's init take ~20 s to compile and the train step ~3x
# longer to compile, and its dropout masks cost ~30% of a model6 step.
PRNG_IMPL = "rbg"

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


class TrainState(train_state.TrainState):
    """Flax's TrainState plus BatchNorm statistics, label smoothing, a teacher
    to distil from and a weight average; without the last three it has the
    leaves (and checkpoints) of a state that never had them."""

    batch_stats: Any
    label_smoothing: float = struct.field(pytree_node=False, default=0.0)
    teacher: Callable | None = struct.field(pytree_node=False, default=None)  # teacher.Teacher
    distill_weight: float = struct.field(pytree_node=False, default=0.0)
    distill_temperature: float = struct.field(pytree_node=False, default=1.0)
    ema_decay: float = struct.field(pytree_node=False, default=0.0)
    ema_params: Any = None

    def eval_params(self) -> Any:
        return self.ema_params if self.ema_decay else self.params


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    div_factor = 25.0  # start at peak / 25, as PyTorch's OneCycleLR
    # After transition_steps optax holds the final value: the epochs past
    # --cycle-epochs train at the cycle's last, smallest rate.
    return optax.cosine_onecycle_schedule(
        transition_steps=config.cycle_span * steps_per_epoch, peak_value=config.lr,
        pct_start=config.warmup_fraction, div_factor=div_factor,
        final_div_factor=1.0 / (div_factor * config.final_lr_fraction))


def _is_kernel(params: Any) -> Any:
    """True for the leaves a ``decay_scope="kernels"`` run decays: the kernels
    of convolutions and dense layers (more than one axis). Before BatchNorm a
    kernel's size does not change the output, so decay there only raises the
    effective step; on a BatchNorm scale or shift, or a bias (1-D), it pulls
    the features themselves towards zero."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(config: Config, schedule: optax.Schedule) -> optax.GradientTransformation:
    mask = _is_kernel if config.decay_scope == "kernels" else None
    if config.optimizer == "adam":
        return optax.adamw(schedule, weight_decay=config.weight_decay, mask=mask)
    sgd = optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov)
    if config.weight_decay:
        # PyTorch's SGD weight_decay: the decay joins the gradient before momentum.
        return optax.chain(optax.add_decayed_weights(config.weight_decay, mask), sgd)
    return sgd


def initial_state(config: Config, schedule: optax.Schedule, model: nn.Module | None = None
                  ) -> tuple[TrainState, jax.Array]:
    """A run's initial state and base dropout key, functions of the seed alone."""
    init_key, dropout_key = jax.random.split(jax.random.key(config.seed, impl=PRNG_IMPL))
    model = get_model(config.model) if model is None else model
    tx = make_optimizer(config, schedule)
    variables = init_variables(model, init_key)
    params = variables["params"]
    distilling = {}
    if config.teacher:
        # Imported here: loading weights (s7jax.runs.weights) needs this module's TrainState.
        from s7jax.training.teacher import Teacher
        distilling = dict(teacher=Teacher(config.teacher), distill_weight=config.distill_weight,
                          distill_temperature=config.distill_temperature)
    state = TrainState.create(
        apply_fn=model.apply, params=params, batch_stats=variables.get("batch_stats", {}), tx=tx,
        label_smoothing=config.label_smoothing, ema_decay=config.ema_decay, **distilling,
        # its own buffers: the state is donated to each step
        ema_params=jax.tree.map(jnp.copy, params) if config.ema_decay else None)
    return state, dropout_key


def metric_sums(log_probs: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> Metrics:
    """Sums (not means) so that epoch figures are exact over any batching."""
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
    correct = jnp.argmax(log_probs, axis=-1) == labels
    weight = jnp.ones_like(nll) if mask is None else mask.astype(nll.dtype)
    return {"loss": jnp.sum(nll * weight),  # traced in the recorded runs' order
            "correct": jnp.sum(correct * weight).astype(jnp.int32),
            "count": jnp.sum(weight).astype(jnp.int32)}


def check_batch(batch: Batch, *, masked: bool = False) -> None:
    """Fail on a batch not of MNIST's shapes and dtypes (at trace time: free)."""
    chex.assert_shape(batch["image"], (None, *INPUT_SHAPE), custom_message='batch["image"]')
    chex.assert_type(batch["image"], float, custom_message='batch["image"]')
    n = batch["image"].shape[0]
    chex.assert_shape(batch["label"], (n,), custom_message='batch["label"]: one per image')
    chex.assert_type(batch["label"], int, custom_message='batch["label"]')
    if masked:
        chex.assert_shape(batch["mask"], (n,), custom_message='batch["mask"]: one per image')


def training_loss(log_probs: jax.Array, labels: jax.Array, label_smoothing: float = 0.0) -> jax.Array:
    """Mean cross-entropy against ``(1 - e) one-hot + e uniform`` targets."""
    nll = jnp.mean(-jnp.take_along_axis(log_probs, labels[:, None], axis=1))
    if not label_smoothing:
        return nll
    return (1 - label_smoothing) * nll - label_smoothing * jnp.mean(log_probs)


def distillation_loss(log_probs: jax.Array, teacher_log_probs: jax.Array,
                      temperature: float) -> jax.Array:
    """Mean ``T^2 KL(teacher || student)`` of both softened by ``T``: the T^2
    keeps its gradient on the scale of the cross-entropy's as T changes.
    Softening log-probabilities softens the logits: they differ by a constant."""
    teacher = jax.nn.log_softmax(teacher_log_probs / temperature)
    student = jax.nn.log_softmax(log_probs / temperature)
    kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
    return temperature ** 2 * jnp.mean(kl)


def train_step(state: TrainState, batch: Batch, key: jax.Array) -> tuple[TrainState, Metrics]:
    """One step on the mean NLL (with label smoothing), mixed with a
    teacher's soft targets if the state has one. Dropout draws from
    ``fold_in(key, step)``: a function of the step alone, so runs resume."""
    check_batch(batch)
    dropout_key = jax.random.fold_in(key, state.step)

    def loss_fn(params):
        log_probs, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"], rngs={"dropout": dropout_key})
        loss = training_loss(log_probs, batch["label"], state.label_smoothing)
        if state.teacher is not None:
            soft = distillation_loss(log_probs, state.teacher(batch["image"]),
                                     state.distill_temperature)
            loss = (1 - state.distill_weight) * loss + state.distill_weight * soft
        return loss, (log_probs, updates)

    (loss, (log_probs, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads,
                                  batch_stats=updates.get("batch_stats", state.batch_stats))
    if state.ema_decay:
        state = state.replace(ema_params=optax.incremental_update(
            state.params, state.ema_params, 1 - state.ema_decay))
    metrics = metric_sums(log_probs, batch["label"])
    # The step of a non-finite loss (-1 if finite), to name it in the error.
    metrics["nonfinite_step"] = jnp.where(jnp.isfinite(loss), -1, state.step - 1).astype(jnp.int32)
    return state, metrics


def train_steps(state: TrainState, batches: tuple[Batch, ...], key: jax.Array
                ) -> tuple[TrainState, Metrics]:
    """Several train steps in one call: faster on CPU, the same maths with
    other float rounding than one step per call (``Config.steps_per_call``)."""
    state, totals = train_step(state, batches[0], key)
    for batch in batches[1:]:
        state, metrics = train_step(state, batch, key)
        totals = combine_metrics(totals, metrics)
    return state, totals


def predict(state: TrainState, images: jax.Array) -> jax.Array:
    """Log-probabilities as evaluation sees them: the weights it scores (the
    moving average where the run keeps one), BN's running statistics, no dropout."""
    return state.apply_fn({"params": state.eval_params(), "batch_stats": state.batch_stats},
                          images, train=False)


def eval_step(state: TrainState, batch: Batch) -> Metrics:
    check_batch(batch, masked=True)
    return metric_sums(predict(state, batch["image"]), batch["label"], batch["mask"])


def combine_metrics(totals: Metrics, metrics: Metrics) -> Metrics:
    """Metric sums of two spans of steps; the first non-finite step wins."""
    out = {k: totals[k] + metrics[k] for k in ("loss", "correct", "count")}
    if "nonfinite_step" in totals:
        first = totals["nonfinite_step"]
        out["nonfinite_step"] = jnp.where(first >= 0, first, metrics["nonfinite_step"])
    return out


accumulate = jax.jit(combine_metrics)


def zero_totals() -> dict[str, np.ndarray]:
    return {"loss": np.float32(0), "correct": np.int32(0), "count": np.int32(0),
            "nonfinite_step": np.int32(-1)}


def mean_loss_and_accuracy(totals: dict[str, Any]) -> tuple[float, float]:
    count = max(int(totals["count"]), 1)
    return float(totals["loss"]) / count, 100.0 * int(totals["correct"]) / count


def make_batch_stats_fn(model: nn.Module) -> Callable:
    """A jitted ``(variables, images) -> batch_stats``: each BN layer's exact
    statistics of these images, dropout off ("precise BN": training collects
    them on augmented images with dropout, evaluation sees neither)."""
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
    """BN statistics over all ``images``, in chunks weighted by size: the mean
    of the means, and E[x^2] - E[x]^2 for the variance."""
    variables = {"params": state.eval_params(), "batch_stats": state.batch_stats}
    starts = range(0, len(images), chunk)
    chunks = [stats_fn(variables, images[i:i + chunk]) for i in starts]
    sizes = [min(chunk, len(images) - i) for i in starts]

    def average(values):
        if len(set(sizes)) == 1:  # equal chunks: a plain mean (the recorded runs' arithmetic)
            return sum(values) / len(values)
        return sum(v * (n / len(images)) for v, n in zip(values, sizes))

    def combine(*layers):
        mean = average([layer["mean"] for layer in layers])
        second = average([layer["var"] + layer["mean"] ** 2 for layer in layers])
        return {"mean": mean, "var": second - mean ** 2}

    is_layer = lambda x: isinstance(x, dict) and set(x) == {"mean", "var"}  # noqa: E731
    return jax.tree.map(combine, *chunks, is_leaf=is_layer)


def evaluate_stacked(state: TrainState, batches: Batch) -> Metrics:
    def body(totals, batch):
        return combine_metrics(totals, eval_step(state, batch)), None

    zeros = {k: jnp.asarray(v) for k, v in zero_totals().items() if k != "nonfinite_step"}
    return jax.lax.scan(body, zeros, batches)[0]


def train_epoch(state: TrainState, source, key: jax.Array, epoch: jax.Array, *,
                first: int = 0, batch_sharding=None) -> tuple[TrainState, Metrics]:
    """Steps ``first ..`` of ``epoch`` as one ``lax.scan`` over the batches of
    ``source`` (a ``data.DeviceTrainData``): the state and metric sums."""
    def body(carry, batch):
        state, totals = carry
        if batch_sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
        state, metrics = train_step(state, batch, key)
        return (state, combine_metrics(totals, metrics)), None

    zeros = {k: jnp.asarray(v) for k, v in zero_totals().items()}
    (state, totals), _ = source.scan(body, (state, zeros), epoch, first)
    return state, totals


def epoch_program(stats_fn: Callable | None, chunk: int, batch_sharding=None) -> Callable:
    """Training, BN re-estimation (``stats_fn``) and evaluation: one dispatch per epoch."""
    def run(state, source, key, epoch, calibration, test, first=0):
        state, train_totals = train_epoch(state, source, key, epoch, first=first,
                                          batch_sharding=batch_sharding)
        if stats_fn is not None:
            state = state.replace(
                batch_stats=precise_batch_stats(stats_fn, state, calibration, chunk))
        return state, train_totals, evaluate_stacked(state, test)

    return run
