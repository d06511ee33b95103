"""Draw training digits, each original above augmented versions of it.

    python scripts/show_augmentations.py --out aug.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from s7jax import data
from s7jax.cli import OneLineErrorParser, add_data_flags, command
from s7jax.config import Config, validate
from s7jax.data.augment import AugmentConfig, augment_tf
from s7jax.data.tf_cpu import tensorflow


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--digits", type=int, default=8, help="training digits, one per column")
    p.add_argument("--versions", type=int, default=4, help="augmented versions of each")
    p.add_argument("--degrees", type=float, default=7.0)
    p.add_argument("--brightness", type=float, default=0.2)
    p.add_argument("--contrast", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    add_data_flags(p)
    args = p.parse_args(argv)
    if not (1 <= args.digits <= 32 and 1 <= args.versions <= 16):
        p.error("--digits must be in 1..32 and --versions in 1..16")
    return args


def run(args: argparse.Namespace) -> None:
    from s7jax.runs import plots  # matplotlib

    config = AugmentConfig(args.degrees, args.brightness, args.contrast)
    validate(Config(augment=config))
    tf = tensorflow()
    train = data.load_mnist(args.data_dir, args.manual_dir)["train"]
    originals = train.images[: args.digits].astype(np.float32) / 255.0
    rows = [originals]
    for v in range(args.versions):
        seed = tf.constant([args.seed, v], tf.int64)
        rows.append(augment_tf(tf.constant(originals), seed, config).numpy())
    titles = [f"label {train.labels[i]}" for i in range(args.digits)]
    titles += [f"augmented {v + 1}" for v in range(args.versions) for _ in range(args.digits)]
    plots.digit_grid(np.concatenate(rows), titles, args.out, columns=args.digits,
                     suptitle=f"top row: originals; below: rotation +/-{config.degrees:g} deg, "
                              f"brightness x[{1 - config.brightness:g}, {1 + config.brightness:g}], "
                              f"contrast x[{1 - config.contrast:g}, {1 + config.contrast:g}]")
    print(f"wrote {args.out}")


main = command(parse_args, run)


if __name__ == "__main__":
    sys.exit(main())
