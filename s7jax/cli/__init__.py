"""What the commands share: flags made from Config's fields, and errors as one
line with an exit code (2 bad input, 3 non-finite loss, 130 Ctrl-C, 143
SIGTERM), never a traceback. Config, and with it JAX, is imported only where
the flags are made: the benchmarks' workers import this module before their
clock starts."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import signal
import sys
from typing import Callable

from s7jax.errors import SIGNALLED, RunError, Terminated, raise_for_signal
from s7jax.training import compile_cache as xla_cache


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (``prog: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")

    def check_positive(self, args: argparse.Namespace, *names: str) -> None:
        for name in names:
            if getattr(args, name) < 1:
                self.error(f"{_flag(name)} must be >= 1, got {getattr(args, name)}")


def _quiet_exit():  # a second Ctrl-C must not break JAX's own atexit clean-up into a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def exit_on_known_errors():
    """Known errors as one line and their exit codes; SIGTERM raises :class:`Terminated`."""
    SIGNALLED["set"] = False
    hook = sys.unraisablehook  # not a report of what SIGNALLED keeps: one line says it
    sys.unraisablehook = lambda u: isinstance(u.exc_value, (KeyboardInterrupt, Terminated)) or hook(u)
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not one ignoring it
            signal.signal(signal.SIGINT, raise_for_signal)
        signal.signal(signal.SIGTERM, raise_for_signal)
        atexit.unregister(_quiet_exit)
        atexit.register(_quiet_exit)  # after JAX's: it runs before them
    try:
        yield
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    except OSError as e:  # a file the commands write outside the library's own checks
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        raise SystemExit(Terminated.exit_code) from None


def command(parse_args: Callable, run: Callable, *, compile_cache: bool = False) -> Callable:
    """A command's ``main(argv=None)``: ``run(parse_args(argv))``, exit 0
    unless it returns a code; ``compile_cache``: XLA's persistent cache on."""
    def main(argv=None) -> int:
        args = parse_args(argv)
        with exit_on_known_errors():
            if compile_cache:
                xla_cache.enable()
            return run(args) or 0

    return main


def _config_fields():
    """``(field, parent)`` per setting, ``augment``'s strengths with parent ``"augment"``."""
    from s7jax.config import Config
    from s7jax.data.augment import AugmentConfig

    for f in dataclasses.fields(Config):
        if f.name == "augment":
            yield from ((g, "augment") for g in dataclasses.fields(AugmentConfig))
        else:
            yield f, None


# Config's annotations, as strings (``from __future__ import annotations``).
_PARSERS = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser, argv=None) -> None:
    """One flag per Config field, plus ``--recipe`` and ``--no-augment``; a flag
    left out keeps the recipe's value (shown in brackets)."""
    from s7jax.config import RECIPES, default_config
    from s7jax.models import MODELS

    # --model and --recipe read ahead, so that --help shows that recipe's values.
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    model = known.model if known.model in MODELS else "model6"
    recipe = known.recipe if known.recipe in RECIPES else "default"
    values = default_config(model, recipe)
    groups = {"": p}
    p.add_argument("--recipe", choices=tuple(RECIPES),
                   help="default: s7jax's recipe for the model; original: the study's (constant "
                        "SGD 0.01, momentum 0.9; augmentation for models 5 and 6 only)")
    for f, parent in _config_fields():
        group = f.metadata.get("group", "data" if parent else "")
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        kwargs = {k: v for k, v in f.metadata.items() if k not in ("help", "group")}
        if f.type == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif f.type in _PARSERS:
            kwargs["type"] = _PARSERS[f.type]
        else:  # a new field of a new type: say so here, not with a wrong parse
            raise TypeError(f"Config.{f.name}: no command-line parser for type {f.type}")
        value = getattr(values.augment if parent else values, f.name)
        shown = {"subset": "all", "teacher": "none"}.get(f.name.split("_")[-1], value) \
            if value is None else value
        help_text = f.metadata["help"]
        if f.name != "model":
            help_text += f" [{model}: {shown}]"
        groups[group].add_argument(_flag(f.name), help=help_text, **kwargs)
    groups["data"].add_argument("--no-augment", action="store_true",
                                help="train without augmentation")
    add_data_flags(groups["data"])


def add_data_flags(p, tfds: bool = True) -> None:
    if tfds:
        p.add_argument("--data-dir", help="TFDS data_dir (default: TFDS's, honouring TFDS_DATA_DIR)")
    p.add_argument("--manual-dir", help="folder with the four official MNIST files and SHA256SUMS "
                                        "(default: the copy inside the package)")


def add_progress_flag(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


def config_from_args(args: argparse.Namespace, **overrides):
    from s7jax.config import default_config
    from s7jax.data.augment import NO_AUGMENT

    given, strengths = {}, {}
    for f, parent in _config_fields():
        value = getattr(args, f.name)
        if value is not None:
            (strengths if parent else given)[f.name] = value
    given.update(overrides)
    model, recipe = given.pop("model", "model6"), args.recipe or "default"
    config = default_config(model, recipe, **given)
    augment = NO_AUGMENT if args.no_augment else config.augment
    return default_config(model, recipe, **given,
                          augment=dataclasses.replace(augment, **strengths))


def config_flags_given(args: argparse.Namespace) -> list[str]:
    names = [f.name for f, _ in _config_fields()] + ["recipe"]
    return sorted([_flag(n) for n in names if getattr(args, n, None) is not None]
                  + ["--no-augment"] * bool(args.no_augment))
