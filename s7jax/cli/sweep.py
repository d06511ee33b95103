"""Train a model over several seeds and summarise them.

    python scripts/sweep.py --model model6 --seeds 5

trains seeds 0..4 into ``results/model6/seed-<s>/``, skipping a complete run
and resuming an interrupted one, then rewrites ``results/summary.json`` and
``results/<model>/seeds.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
from pathlib import Path

import jax

from s7jax.cli import (OneLineErrorParser, add_config_flags, add_progress_flag, command,
                       config_from_args)
from s7jax.errors import Interrupted
from s7jax.runs import checkpoint, results, runfiles, weights
from s7jax.training import loops
from s7jax.training.seeds import AGAIN, STRATEGIES, as_together, default_strategy, train_seeds
from s7jax.training.train import resolve, train_and_evaluate


# sweep.py has no --resume: it resumes a seed's run of the same config by itself.
REFUSAL_ADVICE = ("it is a run of another config; pass --overwrite to replace it, or "
                  "--results to sweep into another folder")


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    add_config_flags(p)
    p.add_argument("--seeds", type=int, default=5, help="train seeds 0 .. SEEDS-1")
    p.add_argument("--results", default="results", help="results folder")
    add_progress_flag(p)
    p.add_argument("--overwrite", action="store_true", help="replace a run of another config")
    p.add_argument("--together", action="store_true", help="train the seeds with the backend's "
                   "default strategy: sequential on a CPU (a vmapped one is several times "
                   "slower there), vmap on GPU and TPU")
    p.add_argument("--strategy", choices=STRATEGIES,
                   help="how the seeds share the process (implies --together): vmap or map, one "
                   "program over the seeds (as --pipeline scan; vmap up to float rounding); "
                   "sequential, each seed's own run in turn (the default without --together)")
    p.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="with vmap or map: save every N epochs and after the last (default 1)")
    args = p.parse_args(argv)
    p.check_positive(args, "checkpoint_every", "seeds")
    return args


def run(args: argparse.Namespace) -> None:
    results_dir, how = Path(args.results), args.strategy or (
        default_strategy(jax.default_backend()) if args.together else "sequential")
    together: dict[int, list] = {}  # vmap or map: the seeds by the step they start from
    load = functools.cache(lambda c: loops.RunData.load(c, args.data_dir, args.manual_dir))
    for seed in range(args.seeds):
        config = config_from_args(args, seed=seed)
        if how != "sequential":
            config = as_together(config)  # as recorded, so that a second sweep finds it
        workdir = results.run_dir(results_dir, config.model, seed, args.recipe or "default")
        same = (runfiles.config_path(workdir).is_file()
                and resolve(runfiles.read_config(workdir)) == resolve(config))
        if (same and len(runfiles.read_metrics(workdir)) >= config.epochs
                and weights.verified(runfiles.weights_path(workdir))):
            print(f"seed {seed}: complete, skipped")
            continue
        step = checkpoint.latest_step(runfiles.checkpoint_dir(workdir)) if same else None
        if how != "sequential":
            together.setdefault(step or 0, []).append((seed, workdir, same))
            continue
        print(f"\n== {config.model} seed {seed} -> {workdir}")
        try:
            train_and_evaluate(config, workdir, resume=step is not None,
                               overwrite=args.overwrite and not same, data_dir=args.data_dir,
                               manual_dir=args.manual_dir, show_progress=not args.no_progress,
                               refusal_advice=REFUSAL_ADVICE,
                               load_data=lambda c: load(dataclasses.replace(c, seed=0)))
        except Interrupted as e:  # say how to go on in the sweep's terms
            raise Interrupted(e.step, workdir, how=AGAIN, signum=e.exit_code - 128) from None
    for step, group in sorted(together.items()):  # seeds stopped together go on together
        print(f"\n== {config.model} seeds {', '.join(str(s) for s, _, _ in group)} together "
              f"({how}{f', from step {step}' if step else ''})")
        train_seeds(config, [s for s, _, _ in group], [w for _, w, _ in group], strategy=how,
                    resume=step > 0, refusal_advice=REFUSAL_ADVICE,
                    overwrite=args.overwrite and not any(same for *_, same in group),
                    data_dir=args.data_dir, manual_dir=args.manual_dir,
                    show_progress=not args.no_progress, checkpoint_every=args.checkpoint_every)
    results.write_summary(results_dir)
    model, kind = config_from_args(args).model, args.recipe or "default"
    if kind == "default":
        from s7jax.runs import plots  # matplotlib

        runs = {f"seed {seed}": runfiles.read_metrics(results.run_dir(results_dir, model, seed))
                for seed in range(args.seeds)}
        plots.accuracy_lines(runs, results_dir / model / "seeds.png", (98.8, 99.8),
                             f"{model}: test accuracy per seed")
    line = results.runs_of(results_dir, model, kind)
    print(f"\n{model} ({kind} recipe): last-3 mean {line['mean']:.3f} +/- {line['std']:.3f} "
          f"over {line['n_seeds']} seeds, min {line['min']:.2f}")


main = command(parse_args, run, compile_cache=True)


if __name__ == "__main__":
    sys.exit(main())
