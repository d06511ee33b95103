"""What each speed choice in model6's training step is worth, in one run.

    python scripts/bench_step.py     # or python -m tools.bench.step

times model6's jitted train step (batch 128, four fixed MNIST-like batches,
clocks read after ``block_until_ready``) as s7jax builds it, and with one choice at a
time swapped for the stock alternative or removed:

* ``nn.max_pool``: Flax's pooling (``reduce_window``, whose gradient
  XLA:CPU lowers to an arg-max over four index arrays and a scatter)
  instead of ``ops.max_pool_2x2`` (bit for bit the same maths);
* ``max-pool gradient by compare``: s7jax's pool before its gradient
  routed by a saved arg-max (it compared the input, recomputed in the
  backward pass, with the forward's max; under fusion that matched nothing
  and the gradient was wrong): the speed the fix had to keep;
* ``XLA's conv gradients``: ``nn.Conv``'s own gradients instead of the
  canonical convolutions of ``ops.conv``;
* ``shifted-matmul weight gradient``: the convolutions' weight gradient as
  nine shifted matrix products (s7jax's before JAX 0.10);
* ``jax.random.bernoulli dropout``: the stock mask instead of the hashed one;
* ``no conv weight gradient``: zero weight gradients for every convolution,
  a bound on what a faster weight gradient could save (not a valid step);
* ``4 steps per jit call``: four steps in one compiled call
  (``train_steps``, ``--steps-per-call 4``);
* ``4 steps per jit call, fenced``: the same with an optimisation barrier
  around each step, to see whether forbidding fusion across steps keeps
  the single step's rounding;
* ``4 steps per jit call, lax.scan``: the four steps as a rolled loop, as
  ``--pipeline scan`` runs an epoch; and the same with XLA's own gradients
  of the convolutions, which XLA:CPU leaves in a slow form inside a loop.

Variants run in turn, ``--rounds`` times, each round in a new order; the
table gives each variant's median step time and its ratio to s7jax's step in
the same run (>1: slower than s7jax's), plus its compile time, and whether
its parameters and BatchNorm statistics after ``--steps`` steps equal s7jax's bit for bit. Writes
``results/step-<backend>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import hashlib
import statistics
import sys
from collections.abc import Callable
from typing import Any

from tools.bench.measure import (clock, command, compile_timed, environment, log, parser,
                                 write_result)
from tools.bench.tables import step_table

BATCH_SIZE = 128
STEPS_PER_CALL = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, "step")
    p.add_argument("--steps", type=int, default=24, help="steps timed per variant and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all variants")
    args = p.parse_args(argv)
    if args.steps < STEPS_PER_CALL or args.steps % STEPS_PER_CALL:
        p.error(f"--steps must be a positive multiple of {STEPS_PER_CALL}, got {args.steps}")
    p.check_positive(args, "rounds")
    return args


def variants() -> dict[str, Callable[[], Any]]:
    """name -> a context in which the train step is traced with that choice."""
    import contextlib

    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from jax import lax

    from s7jax.models import study as models  # where the model classes look up Conv3x3
    from s7jax.models import ops

    @contextlib.contextmanager
    def patched(obj, name, value):
        old = getattr(obj, name)
        setattr(obj, name, value)
        try:
            yield
        finally:
            setattr(obj, name, old)

    def conv_with(weight_grad):
        """A ``conv_general_dilated`` for ``nn.Conv`` (stride 1, explicit
        padding, NHWC) with XLA's forward and input gradient and the weight
        gradient ``weight_grad(x, w, padding, g)``."""
        conv = jax.custom_vjp(ops._canonical_conv, nondiff_argnums=(2,))

        def bwd(padding, residuals, g):
            x, w = residuals
            _, x_vjp = jax.vjp(lambda x: ops._canonical_conv(x, w, padding), x)
            return x_vjp(g)[0], weight_grad(x, w, padding, g)

        conv.defvjp(ops._conv_fwd, bwd)

        def conv_general_dilated(lhs, rhs, window_strides, padding, *args, **kwargs):
            return conv(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))

        return functools.partial(nn.Conv, kernel_size=(3, 3), strides=(1, 1),
                                 conv_general_dilated=conv_general_dilated)

    def shifted_matmuls(x, w, padding, g):
        # s7jax's weight gradient before JAX 0.10: nine (N, Cin)^T (N, Cout)
        # products of shifted input slices.
        kh, kw, cin, cout = w.shape
        height, width = g.shape[1], g.shape[2]
        xp = jnp.pad(x, [(0, 0), padding[0], padding[1], (0, 0)])
        shifts = lax.optimization_barrier(
            [xp[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)])
        g2 = g.reshape(-1, cout)
        return jnp.stack([s.reshape(-1, cin).T @ g2 for s in shifts]).reshape(w.shape)

    def bernoulli(key, shape, keep_prob):
        return jax.random.bernoulli(key, keep_prob, shape)

    def stock_pool(x):
        return nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))

    pool_values = ops.max_pool_2x2  # the values, unpatched

    @jax.custom_vjp
    def compare_pool(x):
        return pool_values(x)

    def compare_pool_fwd(x):
        y = pool_values(x)
        return y, (x, y)

    def compare_pool_bwd(residuals, g):
        # The first window element equal to the forward's max takes g.
        x, y = residuals
        b, h, w, c = x.shape
        windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
        taken = jnp.zeros(y.shape, bool)
        parts = []
        for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):
            hit = ~taken if i == j == 1 else (windows[:, :, i, :, j, :] == y) & ~taken
            taken = taken | hit
            parts.append(jnp.where(hit, g, jnp.zeros_like(g)))
        rows = jnp.stack([jnp.stack(parts[:2], axis=3), jnp.stack(parts[2:], axis=3)], axis=2)
        return (rows.reshape(x.shape),)

    compare_pool.defvjp(compare_pool_fwd, compare_pool_bwd)

    stock_conv = functools.partial(nn.Conv, kernel_size=(3, 3), strides=(1, 1))
    return {
        "s7jax": contextlib.nullcontext,
        "nn.max_pool": lambda: patched(ops, "max_pool_2x2", stock_pool),
        "max-pool gradient by compare": lambda: patched(ops, "max_pool_2x2", compare_pool),
        "XLA's conv gradients": lambda: patched(models, "Conv3x3", stock_conv),
        "shifted-matmul weight gradient": lambda: patched(models, "Conv3x3",
                                                          conv_with(shifted_matmuls)),
        "jax.random.bernoulli dropout": lambda: patched(ops, "keep_mask", bernoulli),
        "no conv weight gradient": lambda: patched(
            models, "Conv3x3", conv_with(lambda x, w, padding, g: jnp.zeros_like(w))),
        f"{STEPS_PER_CALL} steps per jit call": contextlib.nullcontext,
        f"{STEPS_PER_CALL} steps per jit call, fenced": contextlib.nullcontext,
        f"{STEPS_PER_CALL} steps per jit call, lax.scan": contextlib.nullcontext,
        f"{STEPS_PER_CALL} steps per jit call, lax.scan, XLA's conv gradients":
            lambda: patched(models, "Conv3x3", stock_conv),
    }


def inputs() -> tuple[Any, list, Any, Any, Any]:
    """model6's default config, ``STEPS_PER_CALL`` fixed MNIST-like batches
    (each alone, and stacked), its initial state (on the host: each variant
    starts from a copy) and its dropout key."""
    import jax
    import numpy as np

    from s7jax.config import TRAIN_IMAGES, default_config
    from s7jax.data import normalize, steps_per_epoch
    from s7jax.training.steps import initial_state, learning_rate_schedule

    config = default_config("model6")
    schedule = learning_rate_schedule(config, steps_per_epoch(TRAIN_IMAGES, BATCH_SIZE))
    rng = np.random.default_rng(0)
    # MNIST-like: mostly a constant (black) background, so activations tie
    # within pooling windows as they do on real digits.
    pixels = np.where(rng.random((STEPS_PER_CALL, BATCH_SIZE, 28, 28, 1)) < 0.8, 0,
                      rng.integers(1, 256, (STEPS_PER_CALL, BATCH_SIZE, 28, 28, 1)))
    batches = [{"image": normalize(p, np.float64),
                "label": rng.integers(0, 10, BATCH_SIZE).astype(np.int32)} for p in pixels]
    batches = jax.device_put(batches)
    stacked = jax.tree.map(lambda *xs: jax.numpy.stack(xs), *batches)
    host_state, key = initial_state(config, schedule)
    return config, batches, stacked, jax.device_get(host_state), key


def several(state: Any, stacked: Any, key: Any, fenced: bool = False, scan: bool = False) -> Any:
    """``STEPS_PER_CALL`` train steps in one function: as ``train_steps``,
    fenced step by step, or as the rolled loop of ``--pipeline scan``."""
    import jax

    from s7jax.training.steps import train_step, train_steps

    if scan:
        return jax.lax.scan(lambda s, b: (train_step(s, b, key)[0], None), state, stacked)[0]
    group = tuple(jax.tree.map(lambda x: x[i], stacked) for i in range(STEPS_PER_CALL))
    if not fenced:
        return train_steps(state, group, key)[0]
    # Barriers around each step keep XLA from fusing across steps.
    fence = jax.lax.optimization_barrier
    for batch in group:
        state = fence(train_step(state, fence(batch), key)[0])
    return state


def compile_variant(name: str, context: Callable[[], Any], steps: int, batches: list,
                    stacked: Any, host_state: Any, key: Any) -> tuple[Callable, Any, dict]:
    """The variant's step compiled within its context (timed), and run for
    ``steps`` steps from the initial state: ``run(state, n)`` (n steps), the
    state after them, and its record (compile time, the state's SHA-256)."""
    import jax
    import numpy as np

    from s7jax.training.steps import train_step

    multi = "per jit call" in name
    # A new function object per variant: jit's trace cache is keyed on it.
    fn = ((lambda s, b, k, f="fenced" in name, sc="lax.scan" in name: several(s, b, k, f, sc))
          if multi else (lambda s, b, k: train_step(s, b, k)[0]))
    with context():
        compiled, times = compile_timed(jax.jit(fn, donate_argnums=0), jax.device_put(host_state),
                                        stacked if multi else batches[0], key)

    def run(state: Any, n: int) -> Any:
        if multi:
            for _ in range(n // STEPS_PER_CALL):
                state = compiled(state, stacked, key)
        else:
            for i in range(n):
                state = compiled(state, batches[i % STEPS_PER_CALL], key)
        return state

    state = jax.block_until_ready(run(jax.device_put(host_state), steps))  # the same steps for all
    leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))
    digest = hashlib.sha256(b"".join(np.asarray(x).tobytes() for x in leaves)).hexdigest()
    log(f"compiled {name!r} in {times['compile_s']:.2f} s", "bench_step")
    return run, state, {"compile_s": times["compile_s"], "state_sha256": digest, "ms_per_step": []}


def time_rounds(runners: dict[str, tuple[Callable, Any]], results: dict[str, dict],
                steps: int, rounds: int) -> None:
    """``rounds`` rounds of ``steps`` steps of every variant, each round in a
    new order (so that no variant always follows the same one)."""
    names = list(runners)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, state = runners[name]
            seconds, state = clock(lambda: run(state, steps))
            runners[name] = (run, state)
            results[name]["ms_per_step"].append(seconds / steps * 1e3)


def compare(results: dict[str, dict]) -> None:
    """Each variant's median step time, its ratio to s7jax's, and whether it
    ends in s7jax's state."""
    base = statistics.median(results["s7jax"]["ms_per_step"])
    for r in results.values():
        r["median_ms_per_step"] = statistics.median(r["ms_per_step"])
        r["ratio_to_s7jax"] = r["median_ms_per_step"] / base
        r["images_per_s"] = BATCH_SIZE / r["median_ms_per_step"] * 1e3
        r["same_state_as_s7jax"] = r["state_sha256"] == results["s7jax"]["state_sha256"]


def run(args: argparse.Namespace, argv: list[str]) -> int | None:
    env = environment()
    _, batches, stacked, host_state, key = inputs()
    runners, results = {}, {}
    for name, context in variants().items():
        run_fn, state, results[name] = compile_variant(name, context, args.steps, batches,
                                                       stacked, host_state, key)
        runners[name] = (run_fn, state)
    time_rounds(runners, results, args.steps, args.rounds)
    compare(results)
    out = {"command": " ".join(["python scripts/bench_step.py", *argv]),
           "date": datetime.date.today().isoformat(), **env,
           "batch_size": BATCH_SIZE, "steps": args.steps, "rounds": args.rounds,
           "variants": results}
    write_result(out, args.out, "step", table=step_table)


if __name__ == "__main__":
    sys.exit(command(parse_args, run))
