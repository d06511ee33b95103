"""Where a model's train step and epoch spend their time, against the machine's limit.

    python scripts/bench_parts.py     # model6, batch 128 -> results/parts-<backend>.json

(or ``python -m tools.bench.parts``)

breaks the train step into its parts and times each as a program of its
own, on the shapes the model gives it (found by running the model once with
Flax's method interception, so every layer is covered whatever the model):

* each convolution's forward pass, its input gradient and its weight
  gradient (``ops.conv``, as the step computes them; conv1's input gradient
  is never computed, the images need none);
* each BatchNorm, dropout and max-pool layer, forward and backward;
* the optimiser's update of every parameter;
* the whole step, so that "the rest" (ReLU, the log-softmax and the loss,
  and whatever XLA gains or loses by fusing the parts together) is the
  step's time less the parts';
* and, per epoch, what surrounds the steps: making a batch on the device
  (gather and augmentation), the Python dispatch of one call, the BN
  re-estimation and the evaluation of 10,000 images.

Each program is compiled first (untimed), then timed ``--repeats`` times
after ``block_until_ready``; the median is reported, with XLA's cost
analysis of the program (FLOPs, bytes accessed). The machine's limit is
measured in the same run: the FLOP rate of a large float32 matrix product
and the bandwidth of a large elementwise pass. A part's share of the limit
is the larger of its FLOP rate over the peak and its byte rate over the
bandwidth (a roofline bound: 100% would be a part running at the machine's
limit).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Callable
from typing import Any

from tools.bench.measure import command, environment, log, parser, timed, write_result
from tools.bench.tables import parts_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, "parts")
    p.add_argument("--model", default="model6", help="model1 .. model6")
    p.add_argument("--batch-size", type=int, default=128, help="training batch size")
    p.add_argument("--repeats", type=int, default=20, help="timed runs per part (median)")
    args = p.parse_args(argv)
    p.check_positive(args, "batch_size", "repeats")
    return args


def program(fn: Callable, *args: Any, repeats: int) -> dict[str, float]:
    """``fn`` compiled for ``args`` (untimed), its median call of ``repeats``
    after an untimed one, and XLA's cost analysis of the compiled program."""
    import jax

    compiled = jax.jit(fn).lower(*args).compile()
    t = timed(lambda: compiled(*args), repeats)
    cost = compiled.cost_analysis() or {}
    if isinstance(cost, list):  # older JAX: one dict per program
        cost = cost[0] if cost else {}
    return {"ms": 1e3 * t.median, "flops": float(cost.get("flops", 0.0)),
            "bytes": float(cost.get("bytes accessed", 0.0))}


def machine_limit(repeats: int) -> dict[str, float]:
    """Peak float32 FLOP rate (a 2048^3 matrix product) and memory bandwidth
    (an elementwise pass, read and write, over 4 MiB, the size of the step's
    largest activations, and over 256 MiB, beyond any cache), measured here
    and now. The bandwidth limit is the faster of the two."""
    import jax
    import jax.numpy as jnp

    n = 2048
    matmul = program(lambda a: a @ a, jnp.ones((n, n), jnp.float32), repeats=max(3, repeats // 4))
    scale = jax.jit(lambda x: x * 1.5, donate_argnums=0)  # in place: no fresh pages per pass
    rates = {}
    for mib in (4, 256):
        x = jnp.ones((mib * 2**18,), jnp.float32)

        def scaled() -> Any:
            nonlocal x
            x = scale(x)
            return x

        t = timed(scaled, max(3, repeats))  # the first call compiles
        rates[f"gbytes_per_s_{mib}mib"] = 2 * x.nbytes / t.median / 1e9
    return {"gflops": 2 * n ** 3 / matmul["ms"] / 1e6, **rates,
            "gbytes_per_s": max(rates.values())}


def layer_calls(model: Any, variables: Any, images: Any, key: Any) -> list[dict[str, Any]]:
    """Every leaf module call of one training forward pass, in order: the
    module, its input and its variables."""
    import flax.linen as nn

    calls = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and not context.module.__class__.__name__.startswith(
                ("Model", "_")):
            module = context.module
            calls.append({"module": module.clone(parent=None), "name": module.name,
                          "kind": type(module).__name__, "input": args[0],
                          "variables": module.variables})
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply(variables, images, train=True, mutable=["batch_stats"], rngs={"dropout": key})
    return calls


def step_parts(call: dict[str, Any], key: Any, repeats: int) -> list[dict[str, Any]]:
    """The timed programs of one layer: forward, and backward for the input
    and (where it has any) for its parameters."""
    import jax
    import jax.numpy as jnp

    module, x, variables = call["module"], call["input"], dict(call["variables"])
    params = variables.pop("params", {})
    kwargs = {"rngs": {"dropout": key}} if call["kind"] == "Dropout" else {}
    if call["kind"] == "BatchNorm":
        kwargs["mutable"] = ["batch_stats"]

    def forward(params, x):
        out = module.apply({"params": params, **variables}, x, **kwargs)
        return out[0] if isinstance(out, tuple) else out

    y = forward(params, x)
    g = jnp.ones_like(y) * 0.01
    kind = {"Conv": "conv", "BatchNorm": "BatchNorm", "Dropout": "dropout",
            "MaxPool": "max-pool"}.get(call["kind"], call["kind"])
    rows = [dict(part=f"{kind} forward", layer=call["name"],
                 **program(forward, params, x, repeats=repeats))]
    if call["name"] != "conv1":  # nothing asks for the images' gradient
        rows.append(dict(part=f"{kind} input gradient" if kind == "conv" else f"{kind} backward",
                         layer=call["name"],
                         **program(lambda p, x, g: jax.vjp(lambda x: forward(p, x), x)[1](g)[0],
                                 params, x, g, repeats=repeats)))
    if params:
        name = f"{kind} weight gradient" if kind == "conv" else f"{kind} parameter gradient"
        rows.append(dict(part=name, layer=call["name"],
                         **program(lambda p, x, g: jax.vjp(lambda p: forward(p, x), p)[1](g)[0],
                                 params, x, g, repeats=repeats)))
    return rows


def parts_of_the_step(model: Any, state: Any, batch: Any, key: Any,
                      repeats: int) -> list[dict[str, Any]]:
    """Every layer's programs (:func:`step_parts`), then the optimiser's
    update of every parameter."""
    import jax

    variables = {"params": state.params, "batch_stats": state.batch_stats}
    rows = []
    for call in layer_calls(model, variables, batch["image"], key):
        rows += step_parts(call, key, repeats)
    grads = jax.tree.map(lambda p: p * 0.01, state.params)
    rows.append(dict(part="optimiser update", layer="all",
                     **program(lambda s, g: s.apply_gradients(grads=g), state, grads,
                               repeats=repeats)))
    return rows


def around_each_step(state: Any, batches: Any, batch: Any, key: Any,
                     repeats: int) -> list[dict[str, Any]]:
    """What each step costs beside the step: its batch made on the device
    (gather, augmentation), and the Python dispatch of one call."""
    import jax

    made = timed(lambda: next(batches), repeats)  # the first batch of the timing is untimed
    noop = jax.jit(lambda s, b, k: s.step)
    dispatch = timed(lambda: noop(state, batch, key), repeats)  # the first call compiles
    return [dict(part="batch on the device (gather, augmentation)", ms=1e3 * made.median,
                 flops=0.0, bytes=0.0),
            dict(part="dispatch of one call (state, batch, key)", ms=1e3 * dispatch.median,
                 flops=0.0, bytes=0.0)]


def once_per_epoch(config: Any, model: Any, state: Any, train_split: Any, test_split: Any,
                   repeats: int) -> list[dict[str, Any]]:
    """What each epoch costs beside its steps: the BN re-estimation (where
    the recipe has one) and the evaluation of the test set."""
    import jax
    import numpy as np

    from s7jax import data
    from s7jax.training.steps import evaluate_stacked, make_batch_stats_fn, precise_batch_stats

    rows = []
    if config.precise_bn:
        n = min(config.precise_bn, len(train_split))
        images = jax.device_put(data.normalize(train_split.images[:n], np.float64))
        stats_fn = make_batch_stats_fn(model)
        rows.append(dict(part=f"BN re-estimation ({n:,} images)", **program(
            lambda s, x: precise_batch_stats(stats_fn, s, x, config.eval_batch_size),
            state, images, repeats=repeats)))
    stacked = data.eval_batches(test_split, batch_size=config.eval_batch_size)
    rows.append(dict(part=f"evaluation ({len(test_split):,} images)", **program(
        evaluate_stacked, state, stacked, repeats=repeats)))
    return rows


def against_the_limit(rows: list[dict[str, Any]], limit: dict[str, float]) -> None:
    """Each program's FLOP and byte rates, and the larger of their shares of
    the machine's limit."""
    for r in rows:
        s = r["ms"] / 1e3
        r["gflops_per_s"] = r["flops"] / s / 1e9
        r["gbytes_per_s"] = r["bytes"] / s / 1e9
        r["share_of_limit"] = max(r["gflops_per_s"] / limit["gflops"],
                                  r["gbytes_per_s"] / limit["gbytes_per_s"])


def run(args: argparse.Namespace, argv: list[str]) -> int | None:
    from s7jax import data
    from s7jax.config import default_config
    from s7jax.models import get_model
    from s7jax.training.steps import initial_state, learning_rate_schedule, train_step
    from s7jax.training.loops import device_train_data
    from s7jax.training.train import resolve

    env = environment()
    config = resolve(default_config(args.model, batch_size=args.batch_size))
    split = data.load_mnist(source=config.data_source)
    train_split, test_split = split["train"], split["test"]
    steps = data.steps_per_epoch(len(train_split), config.batch_size)
    state, key = initial_state(config, learning_rate_schedule(config, steps))
    batches = device_train_data(config, train_split, None).batches(0, None)
    batch = next(batches)
    model = get_model(config.model)
    log(f"{config.model}, batch {config.batch_size}, {env['backend']}", "bench_parts")

    limit = machine_limit(args.repeats)
    whole = program(lambda s, b: train_step(s, b, key)[0], state, batch, repeats=args.repeats)
    rows = parts_of_the_step(model, state, batch, key, args.repeats)
    per_step = around_each_step(state, batches, batch, key, args.repeats)
    per_epoch = once_per_epoch(config, model, state, train_split, test_split,
                               max(3, args.repeats // 4))
    against_the_limit(rows + per_epoch + [whole], limit)
    result = {
        "command": " ".join(["python scripts/bench_parts.py", *argv]),
        "date": datetime.date.today().isoformat(), **env,
        "model": config.model, "batch_size": config.batch_size, "steps_per_epoch": steps,
        "repeats": args.repeats, "limit": limit, "step": whole,
        "parts": rows, "per_step": per_step, "per_epoch": per_epoch,
    }
    write_result(result, args.out, "parts", table=parts_table)


if __name__ == "__main__":
    sys.exit(command(parse_args, run))
