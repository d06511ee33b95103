"""What training N seeds as one vectorised program costs, against N runs.

    python scripts/bench_seeds.py

times, in one process and one run, model6's training epoch (the recipe's
augmented epochs; batch 128; a subset of the training set, 6,400 images by
default) as ``s7jax.seeds`` runs it for N = 1, 2, 4, 8 seeds at once
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
import statistics
import sys
import time


from s7jax.cli import OneLineErrorParser, exit_on_known_errors, write_result


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 4, 8], help="the Ns to time")
    p.add_argument("--train-images", type=int, default=6400, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs per N (median reported)")
    p.add_argument("--out", help="result JSON (default results/seeds-<backend>.json)")
    args = p.parse_args(argv)
    if min(args.seeds) < 1 or args.epochs < 1 or args.train_images < 128:
        p.error("--seeds and --epochs must be >= 1, --train-images >= 128")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with exit_on_known_errors():
        import jax
        import numpy as np

        from s7jax import data, parallel, seeds
        from s7jax.config import default_config
        from s7jax.runfiles import cpu_identity
        from s7jax.steps import initial_state, learning_rate_schedule, train_epoch
        from s7jax.train import device_train_data

        config = default_config("model6", train_subset=args.train_images, epochs=15)
        split = data.load_mnist()["train"].subset(args.train_images)
        steps = data.steps_per_epoch(len(split), config.batch_size)
        mesh = parallel.make_mesh()
        replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
        schedule = learning_rate_schedule(config, steps)
        epoch_fn = lambda s, src, k, e: train_epoch(s, src, k, e, batch_sharding=sharded)  # noqa: E731

        def measure(n: int, vectorised: bool) -> dict:
            configs = [dataclasses.replace(config, seed=s) for s in range(n)]
            made = [initial_state(c, schedule) for c in configs]
            state = jax.device_put(seeds.stack([m[0] for m in made]) if vectorised else made[0][0],
                                   replicated)
            key = seeds.stack([m[1] for m in made]) if vectorised else made[0][1]
            source = device_train_data(configs[0], split, replicated)
            fn = epoch_fn
            if vectorised:
                source, axes = source.for_seeds([c.seed for c in configs])
                fn = jax.vmap(epoch_fn, in_axes=(0, axes, 0, None))
            t = time.perf_counter()
            compiled = jax.jit(fn, donate_argnums=0).lower(state, source, key,
                                                           np.int32(0)).compile()
            compile_s = time.perf_counter() - t
            memory = compiled.memory_analysis()
            times = []
            for epoch in range(args.epochs + 1):  # the first, untimed, warms up
                t = time.perf_counter()
                state, totals = compiled(state, source, key, np.int32(epoch))
                jax.block_until_ready((state, totals))
                times.append(time.perf_counter() - t)
            seconds = statistics.median(times[1:])
            out = {"seeds": n if vectorised else 1, "epoch_s": seconds, "compile_s": compile_s,
                   "epoch_s_all": times[1:]}
            if memory is not None:
                out["memory_bytes"] = int(memory.temp_size_in_bytes + memory.argument_size_in_bytes
                                          + memory.output_size_in_bytes)
            return out

        single = measure(1, vectorised=False)
        print(f"one seed, one call per epoch: {single['epoch_s']:.2f} s per epoch "
              f"(compiled in {single['compile_s']:.1f} s)", flush=True)
        rows = []
        for n in args.seeds:
            r = measure(n, vectorised=True)
            r["separate_s"] = n * single["epoch_s"]
            r["ratio_to_separate"] = r["epoch_s"] / r["separate_s"]
            r["seed_epochs_per_hour"] = 3600 * n / r["epoch_s"]
            r["separate_seed_epochs_per_hour"] = 3600 / single["epoch_s"]
            rows.append(r)
            print(f"{n} seeds together: {r['epoch_s']:.2f} s per epoch, {r['ratio_to_separate']:.2f}x "
                  f"the time of {n} separate epochs (compiled in {r['compile_s']:.1f} s)", flush=True)
        device = jax.devices()[0]
        result = {
            "command": "python scripts/bench_seeds.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "date": datetime.date.today().isoformat(),
            "backend": jax.default_backend(), "device_kind": device.device_kind,
            "device_count": jax.device_count(), "jax": jax.__version__,
            "cpu": cpu_identity(),
            "train_images": len(split), "steps_per_epoch": steps, "batch_size": config.batch_size,
            "single": single, "together": rows,
        }
        write_result(result, args.out, "seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
