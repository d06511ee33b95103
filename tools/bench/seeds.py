"""What training N seeds as one vectorised program costs, against N runs.

    python scripts/bench_seeds.py    # or python -m tools.bench.seeds

times, in one process and one run, model6's training epoch (the recipe's
augmented epochs; batch 128; a subset of the training set, 6,400 images by
default) as ``s7jax.training.seeds`` runs it for N = 1, 2, 4, 8 seeds at once
(``jax.vmap`` of the epoch program, one call per epoch), against one seed's
epoch with ``--pipeline scan`` repeated N times (the same program unbatched).
Each program is compiled first, untimed (compile time reported apart), then
run for one untimed epoch and ``--epochs`` timed ones; clocks are read after
``block_until_ready``. It reports seed-epochs per hour and the ratio of the
vectorised time to N separate epochs (below 1: together is cheaper), with
XLA's own estimate of each program's memory, and writes
``results/seeds-<backend>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
from typing import Any

from tools.bench.measure import (command, compile_timed, environment, parser, timed,
                                 write_result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__, "seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8], help="the Ns to time")
    p.add_argument("--train-images", type=int, default=6400, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per N (median reported)")
    args = p.parse_args(argv)
    if min(args.seeds) < 1 or args.epochs < 1 or args.train_images < 128:
        p.error("--seeds and --epochs must be >= 1, --train-images >= 128")
    return args


def epoch_time(config: Any, split: Any, n: int, vectorised: bool, epochs: int) -> dict[str, Any]:
    """The epoch program of ``n`` seeds (``jax.vmap``), or of one seed
    unbatched: its compile (timed), XLA's estimate of its memory, and the
    median of ``epochs`` timed epochs after an untimed one."""
    import jax
    import numpy as np

    from s7jax import data
    from s7jax.training import parallel, seeds
    from s7jax.training.steps import initial_state, learning_rate_schedule, train_epoch
    from s7jax.training.loops import device_train_data

    mesh = parallel.make_mesh()
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    schedule = learning_rate_schedule(config, data.steps_per_epoch(len(split), config.batch_size))
    configs = [dataclasses.replace(config, seed=s) for s in range(n)]
    made = [initial_state(c, schedule) for c in configs]
    state = jax.device_put(seeds.stack([m[0] for m in made]) if vectorised else made[0][0],
                           replicated)
    key = seeds.stack([m[1] for m in made]) if vectorised else made[0][1]
    source = device_train_data(configs[0], split, replicated)

    def fn(s: Any, src: Any, k: Any, e: Any) -> Any:
        return train_epoch(s, src, k, e, batch_sharding=sharded)

    if vectorised:
        source, axes = source.for_seeds([c.seed for c in configs])
        fn = jax.vmap(fn, in_axes=(0, axes, 0, None))
    compiled, times = compile_timed(jax.jit(fn, donate_argnums=0), state, source, key,
                                    np.int32(0))
    memory = compiled.memory_analysis()
    epoch = 0

    def one_epoch() -> Any:
        nonlocal state, epoch
        state, totals = compiled(state, source, key, np.int32(epoch))
        epoch += 1
        return state, totals

    t = timed(one_epoch, epochs)  # the first epoch, untimed, warms up
    out = {"seeds": n if vectorised else 1, "epoch_s": t.median, "compile_s": times["compile_s"],
           "epoch_s_all": t.seconds}
    if memory is not None:
        out["memory_bytes"] = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                  + memory.output_size_in_bytes)
    return out


def run(args: argparse.Namespace, argv: list[str]) -> int | None:
    from s7jax import data
    from s7jax.config import default_config

    env = environment()
    config = default_config("model6", train_subset=args.train_images, epochs=15)
    split = data.load_mnist()["train"].subset(args.train_images)
    single = epoch_time(config, split, 1, False, args.epochs)
    print(f"one seed, one call per epoch: {single['epoch_s']:.2f} s per epoch "
          f"(compiled in {single['compile_s']:.1f} s)", flush=True)
    rows = []
    for n in args.seeds:
        r = epoch_time(config, split, n, True, args.epochs)
        r["separate_s"] = n * single["epoch_s"]
        r["ratio_to_separate"] = r["epoch_s"] / r["separate_s"]
        r["seed_epochs_per_hour"] = 3600 * n / r["epoch_s"]
        r["separate_seed_epochs_per_hour"] = 3600 / single["epoch_s"]
        rows.append(r)
        print(f"{n} seeds together: {r['epoch_s']:.2f} s per epoch, {r['ratio_to_separate']:.2f}x "
              f"the time of {n} separate epochs (compiled in {r['compile_s']:.1f} s)", flush=True)
    result = {
        "command": "python scripts/bench_seeds.py " + " ".join(argv),
        "date": datetime.date.today().isoformat(), **env,
        "train_images": len(split), "steps_per_epoch": data.steps_per_epoch(
            len(split), config.batch_size), "batch_size": config.batch_size,
        "single": single, "together": rows,
    }
    write_result(result, args.out, "seeds")


if __name__ == "__main__":
    sys.exit(command(parse_args, run))
