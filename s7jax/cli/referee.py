"""Train a model the way the original study did, in PyTorch, as a referee
for s7jax's run of the same model.

    python scripts/referee.py --model model2 --seed 0

trains into ``results/model2/torch-seed-0/``; needs PyTorch and torchvision
(``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import sys

from s7jax.cli import OneLineErrorParser, add_data_flags, add_progress_flag, command
from s7jax.config import MAX_EPOCHS
from s7jax.reference.referee import RefereeConfig, train_referee, workdir_for


def parse_args(argv=None):
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="model6", help="model1 .. model6 (default model6)")
    p.add_argument("--seed", type=int, default=0, help="initialisation and order seed (default 0)")
    p.add_argument("--epochs", type=int, default=MAX_EPOCHS, help=f"epochs (default {MAX_EPOCHS})")
    p.add_argument("--allow-long", action="store_true",
                   help=f"allow more than {MAX_EPOCHS} epochs (the study itself trained 20)")
    p.add_argument("--train-subset", type=int, help="train on the first N images only (quick runs)")
    p.add_argument("--test-subset", type=int, help="evaluate on the first N test images only")
    p.add_argument("--results", default="results", help="results folder")
    add_data_flags(p, tfds=False)
    p.add_argument("--workdir", help="the run's folder (default RESULTS/<model>/torch-seed-<seed>)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already there")
    add_progress_flag(p)
    return p.parse_args(argv)


def run(args) -> None:
    config = RefereeConfig.original(args.model, args.seed, args.epochs, args.train_subset,
                                    args.test_subset, args.allow_long)
    workdir = args.workdir or workdir_for(args.results, config)
    train_referee(config, workdir, manual_dir=args.manual_dir,
                  overwrite=args.overwrite, show_progress=not args.no_progress)


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
