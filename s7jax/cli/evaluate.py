"""Evaluate a saved run, or a weights file, on the MNIST test set.

    python scripts/evaluate.py --checkpoint runs/model6-<timestamp>
    python scripts/evaluate.py --weights results/model6/seed-0/weights.msgpack

prints the figures of the run's last ``metrics.jsonl`` row.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import jax
import numpy as np

from s7jax import data
from s7jax.cli import OneLineErrorParser, add_data_flags, command
from s7jax.config import TRAIN_IMAGES, Config
from s7jax.errors import ConfigError
from s7jax.models import get_model
from s7jax.runs import checkpoint, runfiles, weights
from s7jax.training.loops import device_eval_batches, evaluate
from s7jax.training.parallel import all_devices
from s7jax.training.steps import eval_step, initial_state, learning_rate_schedule, predict
from s7jax.training.train import matmul_precision


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--checkpoint", help="run folder, its checkpoints/ folder, or a step in it")
    which.add_argument("--weights", metavar="FILE",
                       help="a weights file (results/<model>/seed-<s>/weights.msgpack)")
    p.add_argument("--misclassified", metavar="FILE.png", help="draw the misclassified digits here")
    p.add_argument("--max-digits", type=int, default=48, help="at most this many in the gallery")
    add_data_flags(p)
    return p.parse_args(argv)


def locate(path: Path) -> tuple[Path, int | None]:
    """(run folder, step or None for the latest)."""
    for workdir, step in ((path, None), (path.parent, None), (path.parent.parent, path.name)):
        if runfiles.config_path(workdir).is_file() and (step is None or step.isdigit()):
            return workdir, None if step is None else int(step)
    raise ConfigError(f"--checkpoint {path}: no run's config.json found at or above it")


def run(args: argparse.Namespace) -> None:
    all_devices()  # a JAX_PLATFORMS without its device: one line
    # The weights or the checkpoint first: their faults need no data, and
    # come before TensorFlow loads.
    if args.weights:
        name, variables, info = weights.load(args.weights)
        model = get_model(name)
        state, test_subset = weights.as_state(model, variables), None
        eval_batch_size = Config.eval_batch_size  # the default every recorded run used
        source = "auto"
        where = f"{name} from {args.weights} (epoch {info.get('epoch')})"
        precision = contextlib.nullcontext()
    else:
        workdir, step = locate(Path(args.checkpoint))
        config = runfiles.read_config(workdir)
        ckpt_dir = runfiles.checkpoint_dir(workdir)
        if step is None and checkpoint.latest_step(ckpt_dir) is None:
            raise ConfigError(f"no checkpoint in {ckpt_dir}")
        steps = data.steps_per_epoch(config.train_subset or TRAIN_IMAGES, config.batch_size)
        # A distilled run's teacher trains, it does not evaluate: no need of its weights file.
        state, _ = initial_state(dataclasses.replace(config, teacher=None),
                                 learning_rate_schedule(config, steps))
        state, record = checkpoint.restore(ckpt_dir, state, step, log=print)
        where = f"{config.model} step {int(state.step)} (epoch {record['epoch']})"
        test_subset, eval_batch_size = config.test_subset, config.eval_batch_size
        source = config.data_source
        precision = matmul_precision(config)  # the run's, so its figures come out again
    data.check_files(source, args.data_dir, args.manual_dir)
    splits = data.load_mnist(args.data_dir, args.manual_dir, source=source)
    test = splits["test"].subset(test_subset)
    with precision:
        loss, acc = evaluate(jax.jit(eval_step), state, device_eval_batches(test, eval_batch_size))
    print(f"{where}: test loss {loss:.4f}, test acc {acc:.2f}% on {len(test):,} images")

    if args.misclassified:
        from s7jax.runs import plots  # matplotlib

        apply = jax.jit(predict)  # what eval_step scored
        with precision:
            predictions = np.concatenate([
                np.asarray(apply(state, images)).argmax(-1)
                for images in data.eval_batches(test, batch_size=eval_batch_size)["image"]
            ])[:len(test)]
        wrong = np.flatnonzero(predictions != test.labels)
        shown = wrong[:args.max_digits]
        written = plots.digit_grid(test.images[shown], [f"{test.labels[i]} -> {predictions[i]}" for i in shown],
                         args.misclassified, columns=12,
                         suptitle=f"{len(wrong)} misclassified of {len(test):,} (true -> predicted)")
        print(f"wrote {written} ({len(shown)} of {len(wrong)} misclassified digits)")


main = command(parse_args, run, compile_cache=True)


if __name__ == "__main__":
    sys.exit(main())
