"""Train a model (one of the study's six, or model7) on MNIST, evaluating it every epoch.

    python scripts/train.py --model model6

runs model6's default recipe for 15 epochs into ``runs/model6-<timestamp>/``;
every flag overrides one setting of the recipe.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax

from s7jax.cli import (OneLineErrorParser, add_config_flags, add_progress_flag, command,
                       config_flags_given, config_from_args)
from s7jax.errors import ConfigError
from s7jax.models import get_model, init_variables
from s7jax.models.summary import layer_table
from s7jax.runs import runfiles
from s7jax.training import parallel
from s7jax.training.steps import PRNG_IMPL
from s7jax.training.train import resolve, train_and_evaluate


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0],
                           epilog="In brackets: what the recipe (--recipe) of the --model given "
                                  "(model6 by default) sets each flag to.")
    add_config_flags(p, argv)
    p.add_argument("--workdir", help="where the run's files go (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="WORKDIR", help="continue the run in WORKDIR from its last "
                                                       "intact checkpoint, with its config")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run that --workdir already holds (its files are deleted)")
    add_progress_flag(p)
    p.add_argument("--print-config", action="store_true",
                   help="print the config, auto settings resolved, as JSON and exit")
    p.add_argument("--distributed", action="store_true",
                   help="several hosts as one: call jax.distributed.initialize() first (give the "
                        "three flags below where no cluster is detected)")
    cluster = p.add_argument_group("--distributed, where no cluster is detected")
    cluster.add_argument("--coordinator-address", metavar="HOST:PORT",
                         help="process 0's address, the same on every process")
    cluster.add_argument("--num-processes", type=int, help="how many processes in all")
    cluster.add_argument("--process-id", type=int, help="this process's number, 0 .. N-1")
    args = p.parse_args(argv)
    cluster_flags = (args.coordinator_address, args.num_processes, args.process_id)
    if any(x is not None for x in cluster_flags) and not args.distributed:
        p.error("--coordinator-address, --num-processes and --process-id go with --distributed")
    return args


def run(args: argparse.Namespace) -> None:
    if args.resume:
        workdir = Path(args.resume)
        flags = config_flags_given(args)
        flags += ["--workdir"] * bool(args.workdir) + ["--overwrite"] * args.overwrite
        if flags:
            raise ConfigError(f"--resume continues {workdir} as its config.json records it; "
                              f"drop {', '.join(flags)}, or start a new run with them")
        config = runfiles.read_config(workdir)
    else:
        config = config_from_args(args)
    if args.print_config:
        print(resolve(config).dumps())
        return
    if not args.resume:
        workdir = Path(args.workdir) if args.workdir else runfiles.unique_dir(Path("runs"), config.model)

    if args.distributed:  # join the other processes before JAX is asked for its devices
        # CPU devices of several processes need a collectives library to talk.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=args.coordinator_address,
                                   num_processes=args.num_processes, process_id=args.process_id)
    mesh = parallel.make_mesh()

    def banner():  # once the folder and the checkpoint are known good: errors come first
        print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices: {jax.devices()}")
        print(parallel.describe(mesh))
        model = get_model(config.model)
        variables = init_variables(model, jax.random.key(0, impl=PRNG_IMPL))
        print(f"\n{config.model}\n{layer_table(model, variables)}\n")
        print(f"workdir {workdir}")

    history = train_and_evaluate(config, workdir, resume=bool(args.resume),
                                 overwrite=args.overwrite, mesh=mesh,
                                 data_dir=args.data_dir, manual_dir=args.manual_dir,
                                 show_progress=not args.no_progress, on_start=banner)
    if not runfiles.writes_files():
        print(f"process {jax.process_index()} of {jax.process_count()}: process 0 writes the "
              "run's files")
        return
    from s7jax.runs import plots  # matplotlib: not before the checks that need no data

    curves = plots.curves(history, runfiles.curves_path(workdir),
                          title=f"{config.model}, seed {config.seed}")
    written = [runfiles.metrics_path(workdir), curves, runfiles.weights_path(workdir)]
    print(f"wrote {', '.join(map(str, written))}, {runfiles.checkpoint_dir(workdir)}/")


main = command(parse_args, run, compile_cache=True)


if __name__ == "__main__":
    sys.exit(main())
