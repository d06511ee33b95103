"""What the scripts share: one-line errors with meaningful exit codes.

Bad input never ends in a traceback: argument errors, invalid settings,
unusable data and unwritable folders print one line on stderr and exit 2;
a non-finite loss exits 3; Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from s7jax.config import DATA_SOURCES, PIPELINES
from s7jax.errors import RunError


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (``prog: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


@contextlib.contextmanager
def exit_on_known_errors():
    try:
        yield
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except OSError as e:  # a file the scripts write outside the library's own checks
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


def recipe_model(argv=None) -> str:
    """The ``--model`` on the command line (model6 when absent or unknown),
    read ahead of parsing so that ``--help`` can show that model's recipe."""
    from s7jax.models import MODELS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    known, _ = pre.parse_known_args(argv)
    return known.model if known.model in MODELS else "model6"


def show_recipe(p: argparse.ArgumentParser, model: str) -> None:
    """Append to each config flag's help what ``model``'s recipe sets it to."""
    import dataclasses

    from s7jax.config import default_config

    recipe = default_config(model)
    values = {**dataclasses.asdict(recipe), **dataclasses.asdict(recipe.augment)}
    for action in p._actions:  # argparse keeps no public list of its actions
        if action.dest in values and action.dest != "model":
            value = values[action.dest]
            shown = "all" if value is None and action.dest.endswith("subset") else value
            action.help = f"{action.help or ''} [{model}: {shown}]".strip()


def add_config_flags(p: argparse.ArgumentParser, argv=None) -> None:
    """The flags that set a :class:`s7jax.config.Config` (unset ones keep the
    model's default recipe, which ``--help`` shows for the ``--model`` given)."""
    p.add_argument("--model", help="model1 .. model6 (default model6)")
    p.add_argument("--epochs", type=int, help="epochs to train (1..15 unless --allow-long)")
    p.add_argument("--batch-size", type=int, help="training batch size (global, over all devices)")
    p.add_argument("--seed", type=int, help="seed of init, shuffling, augmentation, dropout (default 0)")
    g = p.add_argument_group("data")
    g.add_argument("--train-subset", type=int, help="train on the first N images only (quick runs)")
    g.add_argument("--test-subset", type=int, help="evaluate on the first N test images only")
    g.add_argument("--no-augment", action="store_true", help="train without augmentation")
    g.add_argument("--degrees", type=float, help="rotation range +/- degrees (0 disables)")
    g.add_argument("--brightness", type=float, help="brightness factor range 1 +/- x (0 disables)")
    g.add_argument("--contrast", type=float, help="contrast factor range 1 +/- x (0 disables)")
    g.add_argument("--clean-epochs", type=int, help="train the last N epochs without augmentation")
    g.add_argument("--pipeline", choices=PIPELINES,
                   help="tfds: tf.data on the host, one call per step; device: data and "
                        "augmentation on the accelerator, one call per step; scan: on the "
                        "accelerator, one compiled call per epoch (train, BN re-estimation, "
                        "evaluation). auto (default): scan on GPU/TPU, where per-step dispatch "
                        "would set the pace; tfds on CPU (device without TensorFlow), where a "
                        "rolled scan runs slower and every recorded run used tfds")
    g.add_argument("--data-source", choices=DATA_SOURCES,
                   help="tfds, or idx (the official files read with numpy, no TensorFlow); "
                        "auto (default): tfds where it is installed")
    g.add_argument("--data-dir", help="TFDS data_dir (default: TFDS's, honouring TFDS_DATA_DIR)")
    g.add_argument("--manual-dir", help="folder with the four official MNIST files and SHA256SUMS")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", help="sgd or adam (AdamW when --weight-decay > 0)")
    g.add_argument("--lr", type=float, help="learning rate (the peak, with --schedule onecycle)")
    g.add_argument("--momentum", type=float, help="SGD momentum")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction, help="Nesterov momentum")
    g.add_argument("--weight-decay", type=float, help="weight decay")
    g.add_argument("--schedule", help="constant or onecycle (cosine warm-up and decay)")
    g.add_argument("--warmup-fraction", type=float, help="one-cycle: share of steps rising to the peak")
    g.add_argument("--final-lr-fraction", type=float,
                   help="one-cycle: final lr as a fraction of the peak")
    g.add_argument("--precise-bn", type=int,
                   help="re-estimate BatchNorm statistics on N clean training images each epoch (0: off)")
    g.add_argument("--eval-batch-size", type=int, help="evaluation batch size")
    g.add_argument("--steps-per-call", type=int,
                   help="train steps per compiled call (faster on CPU; rounds differently from 1)")
    g.add_argument("--allow-long", action="store_true", help="allow more than 15 epochs")
    show_recipe(p, recipe_model(argv))


_CONFIG_FLAGS = ("epochs", "batch_size", "train_subset", "test_subset", "clean_epochs", "pipeline",
                 "data_source",
                 "optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                 "warmup_fraction", "final_lr_fraction", "precise_bn", "eval_batch_size",
                 "steps_per_call")


def config_from_args(args: argparse.Namespace, **overrides):
    """The model's default recipe with every flag that was given applied."""
    import dataclasses

    from s7jax.augment import NO_AUGMENT
    from s7jax.config import default_config

    given = {k: getattr(args, k) for k in _CONFIG_FLAGS if getattr(args, k) is not None}
    given.update({"seed": 0 if args.seed is None else args.seed, "allow_long": args.allow_long,
                  **overrides})
    model = args.model or "model6"
    config = default_config(model, **given)
    augment = NO_AUGMENT if args.no_augment else config.augment
    strengths = {k: getattr(args, k) for k in ("degrees", "brightness", "contrast")
                 if getattr(args, k) is not None}
    return default_config(model, **given, augment=dataclasses.replace(augment, **strengths))


def config_flags_given(args: argparse.Namespace) -> list[str]:
    """The config flags set on the command line, as the user typed them."""
    names = [*_CONFIG_FLAGS, "model", "seed", "degrees", "brightness", "contrast"]
    flags = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) is not None]
    flags += [f"--{n.replace('_', '-')}" for n in ("no_augment", "allow_long") if getattr(args, n)]
    return flags
