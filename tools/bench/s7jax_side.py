"""The s7jax side of ``scripts/bench.py``: model6's training as its default run does it.

One function per measurement (the epochs' in
:mod:`tools.bench.s7jax_epochs`), each on a :class:`Bench` (the data,
the compiled step and the train state they pass on), run in turn by
:func:`run` in a process of its own (:mod:`tools.bench.against_pytorch` starts
it), so that the peak memory it records is s7jax's alone. The order matters
for that memory: everything the default run does comes first, then the
one-call epoch (its program holds more) and the tf.data epochs (they load
TensorFlow, ~750 MB resident).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from tools.bench.measure import clock, compile_timed, log, maxrss, timed
from tools.bench.s7jax_epochs import (
    STEPS_PER_CALL, epoch_device, epoch_scan, tfds_epochs)

EVAL_BATCH_SIZE = 1000  # s7jax's default (Config.eval_batch_size)


@dataclasses.dataclass
class Bench:
    """What the measurements share. ``state`` is the train state they pass on
    (the step donates its input); each epoch measurement starts from a fresh
    device copy of ``host_state``, whose static parts (model, optimiser) stay
    the objects the step was compiled for."""

    spec: dict[str, Any]
    config: Any  # model6's recipe, every epoch augmented, no BN re-estimation
    train_split: Any
    test_split: Any
    steps: int  # per epoch
    mesh: Any
    replicated: Any  # shardings: the state's, and a batch's
    sharded: Any
    host_state: Any
    key: Any  # dropout
    step_jit: Any  # jitted steps.train_steps: the training loop's own call
    state: Any = None
    step: Any = None  # step_jit compiled for one step on the fixed batch
    fixed: Any = None  # the first batch of the on-device pipeline

    def fresh_state(self) -> Any:
        import jax

        self.state = jax.device_put(self.host_state, self.replicated)
        return self.state

    def device_data(self) -> Any:
        from s7jax.training import loops

        return loops.device_train_data(self.config, self.train_split, self.replicated)


def load_data(spec: dict[str, Any], out: dict[str, Any]) -> tuple[Any, Any]:
    """MNIST as the default run reads it (``s7jax.training.train.resolve``: the IDX
    files, without TensorFlow in the process), timed: the training and test
    splits."""
    from s7jax import data
    from s7jax.training import train
    from s7jax.config import default_config

    t = time.perf_counter()
    out["data_source"] = train.resolve(default_config("model6")).data_source
    splits = data.load_mnist(spec["data_dir"], spec["manual_dir"], source=out["data_source"])
    train_split = splits["train"].subset(spec["train_images"])
    test_split = splits["test"].subset(spec["test_images"])
    out["load_data_s"] = time.perf_counter() - t
    out["train_images"] = len(train_split)
    return train_split, test_split


def prepare(spec: dict[str, Any], train_split: Any, test_split: Any) -> Bench:
    """What the measurements share: the config, the mesh, the initial state,
    the jitted step."""
    import jax

    from s7jax import data
    from s7jax.training import parallel
    from s7jax.config import default_config
    from s7jax.training.steps import initial_state, learning_rate_schedule, train_steps

    # Every measured epoch is augmented, as on the PyTorch side: the recipe's
    # clean last epochs and its BN re-estimation (timed apart) are off.
    config = default_config("model6", batch_size=spec["batch_size"],
                            epochs=spec["epochs_measured"], allow_long=True, clean_epochs=0,
                            precise_bn=0)
    steps = data.steps_per_epoch(len(train_split), config.batch_size)
    mesh = parallel.make_mesh()
    replicated = parallel.replicated(mesh)
    host_state, key = initial_state(config, learning_rate_schedule(config, steps))
    step_jit = jax.jit(train_steps, donate_argnums=0, out_shardings=(replicated, replicated))
    return Bench(spec, config, train_split, test_split, steps, mesh, replicated,
                 parallel.batch_sharded(mesh), jax.device_get(host_state), key, step_jit)


def compile_step(b: Bench) -> dict[str, float]:
    """The train step traced and compiled (one step per call), timed."""
    b.fresh_state()
    b.fixed = next(b.device_data().batches(0, b.sharded))
    b.step, times = compile_timed(b.step_jit, b.state, (b.fixed,), b.key)
    log(f"s7jax: train step traced and compiled in {times['compile_s']:.2f} s")
    return {"trace_train_step_s": times["trace_s"], "compile_train_step_s": times["compile_s"]}


def step_rate(b: Bench) -> dict[str, Any]:
    """The compiled step alone on the fixed batch: ``warmup`` steps untimed,
    then ``steps`` steps back to back."""
    import jax

    from s7jax.training.steps import accumulate, zero_totals

    metrics = None

    def one_step() -> Any:
        nonlocal metrics
        b.state, metrics = b.step(b.state, (b.fixed,), b.key)
        return b.state

    steps = b.spec["steps"]
    t = timed(one_step, calls=steps, warmup=max(b.spec["warmup"] - 1, 0))
    # The epochs add each call's metrics on the device: compiled here, untimed.
    jax.block_until_ready(accumulate(jax.device_put(zero_totals(), b.replicated), metrics))
    rate = steps * b.config.batch_size / t.seconds[0]
    log(f"s7jax: step rate {rate:,.0f} img/s ({steps} steps)")
    return {"step": {"steps": steps, "seconds": t.seconds[0]}, "step_images_per_s": rate}


def compile_grouped(b: Bench) -> float:
    """Seconds to compile the same jitted function for every group size an
    epoch of ``STEPS_PER_CALL`` steps per call uses (``--steps-per-call``)."""
    from s7jax.training import loops

    def compile_all() -> Any:
        for n in {1} | {n for n, _, _ in loops.epoch_calls(0, b.steps, STEPS_PER_CALL)}:
            b.state, _ = b.step_jit(b.state, (b.fixed,) * n, b.key)
        return b.state

    return clock(compile_all)[0]


def precise_bn(b: Bench, images: int) -> dict[str, Any]:
    """The recipe's BN re-estimation on ``images`` clean training images, as
    after every epoch (its first call compiles)."""
    import jax
    import numpy as np

    from s7jax import data
    from s7jax.models import get_model
    from s7jax.training.steps import make_batch_stats_fn, precise_batch_stats

    n = min(images, len(b.train_split))
    x = jax.device_put(data.normalize(b.train_split.images[:n], np.float64))
    stats_fn = make_batch_stats_fn(get_model(b.config.model))
    t = timed(lambda: precise_batch_stats(stats_fn, b.state, x, EVAL_BATCH_SIZE))
    log(f"s7jax: BN re-estimation on {n:,} images {t.seconds[0]:.3f} s")
    return {"images": n, "seconds": t.seconds[0], "first_call_s": t.first_s}


def evaluation(b: Bench) -> dict[str, Any]:
    """The test set's evaluation as after every epoch, the batches already on
    the device (their preparation timed apart; the first call compiles)."""
    import jax

    from s7jax.training import loops
    from s7jax.training.steps import eval_step

    t = time.perf_counter()
    batches = loops.device_eval_batches(b.test_split, EVAL_BATCH_SIZE, b.sharded)
    prepare_s = time.perf_counter() - t
    eval_fn = jax.jit(eval_step, out_shardings=b.replicated)
    t = timed(lambda: loops.evaluate(eval_fn, b.state, batches))
    (loss, acc), n = t.result, len(b.test_split)
    log(f"s7jax: evaluation of {n:,} images {t.seconds[0]:.3f} s (acc {acc:.2f}%)")
    return {"seconds": t.seconds[0], "images": n, "images_per_s": n / t.seconds[0],
            "first_call_s": t.first_s, "prepare_batches_s": prepare_s,
            "batch_size": EVAL_BATCH_SIZE, "test_loss": loss, "test_acc": acc}


def eval_one_call(b: Bench, repeats: int = 5) -> dict[str, Any]:
    """The same evaluation as one compiled call over the stacked batches (as
    the one-call-per-epoch loop runs it): the median of ``repeats``, like PyTorch's
    evaluation a typical call, not a lucky one."""
    import jax

    from s7jax import data
    from s7jax.training import parallel
    from s7jax.training.steps import evaluate_stacked

    stacked = jax.device_put(data.eval_batches(b.test_split, batch_size=EVAL_BATCH_SIZE),
                             parallel.stacked_batch_sharded(b.mesh))
    eval_fn = jax.jit(evaluate_stacked, out_shardings=b.replicated)
    t = timed(lambda: eval_fn(b.state, stacked), repeats)  # the first call compiles
    log(f"s7jax: evaluation as one call {t.median * 1e3:.1f} ms (median of {repeats})")
    n = len(b.test_split)
    return {"seconds": t.median, "images": n, "images_per_s": n / t.median}


def devices() -> dict[str, Any]:
    """The devices measured on (from the environment record), and an
    accelerator's peak memory."""
    import jax

    from tools.bench.measure import environment

    env = environment()
    out = {k: env[k] for k in ("backend", "device_kind", "device_count")}
    stats = jax.devices()[0].memory_stats() if out["backend"] != "cpu" else None
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
    return out


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Every measurement in turn, and the peak memory after each stage."""
    t0 = time.perf_counter()
    import jax  # noqa: F401  (a training run's imports, timed)

    from s7jax import data  # noqa: F401
    from s7jax.training import train  # noqa: F401
    from s7jax.training import parallel, steps
    from s7jax.config import default_config

    out: dict[str, Any] = {"import_s": time.perf_counter() - t0}
    stages = out["memory_stages"] = {"imports (JAX, Flax, Optax, s7jax)": maxrss()["maxrss_kib"]}
    splits = load_data(spec, out)
    stages["MNIST in host memory"] = maxrss()["maxrss_kib"]
    b = prepare(spec, *splits)
    out.update(compile_step(b))
    stages["train step compiled"] = maxrss()["maxrss_kib"]
    out.update(step_rate(b))
    out["compile_train_steps_s"] = compile_grouped(b)
    out["epoch_device"] = epoch_device(b)
    stages["an epoch of the on-device pipeline"] = maxrss()["maxrss_kib"]
    recipe = default_config("model6")
    if recipe.precise_bn:
        out["precise_bn"] = precise_bn(b, recipe.precise_bn)
    out["eval"] = evaluation(b)
    # Everything the default run does has run: its peak memory.
    out["default_path"] = maxrss()
    stages["BN re-estimation, evaluation"] = out["default_path"]["maxrss_kib"]
    out.update(epoch_scan(b))
    stages["then the one-call epoch (--pipeline scan)"] = maxrss()["maxrss_kib"]
    out["eval_one_call"] = eval_one_call(b)
    out.update(tfds_epochs(b))
    out.update(maxrss())
    out.update(devices())
    out["config"] = b.config.to_json()
    return out
