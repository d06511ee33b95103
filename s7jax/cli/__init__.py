"""What the scripts share: one-line errors with meaningful exit codes.

Bad input never ends in a traceback: argument errors, invalid settings,
unusable data and unwritable folders print one line on stderr and exit 2;
a non-finite loss exits 3; Ctrl-C exits 130 and SIGTERM 143.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
from typing import Callable

from s7jax.errors import RunError, Terminated


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line (``prog: error: ...``), exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _terminate(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def exit_on_known_errors():
    """Known errors as one line and their exit codes. SIGTERM, which would
    kill the process where it stands, raises :class:`Terminated` instead, so
    that what a Ctrl-C cleans up is cleaned up (the training loop turns both
    into a checkpoint, see ``s7jax.runs.recorder.interrupt_flag``)."""
    with contextlib.suppress(ValueError):  # ValueError: not the main thread
        signal.signal(signal.SIGTERM, _terminate)
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
    except Terminated:
        print("error: terminated (SIGTERM)", file=sys.stderr)
        raise SystemExit(Terminated.exit_code) from None


def run_command(run: Callable[[], int], *, compile_cache: bool = False) -> int:
    """A command's body: ``run()``, its known errors as one line
    (:func:`exit_on_known_errors`); ``compile_cache``: XLA's persistent
    cache first, for a command that compiles (a second identical run skips
    XLA's compiles)."""
    with exit_on_known_errors():
        if compile_cache:
            from s7jax.training import compile_cache as cache

            cache.enable()
        return run()


def _recipe_choice(argv=None) -> tuple[str, str]:
    """``(model, recipe)`` as given on the command line (model6 and default
    when absent or unknown), read ahead of parsing so that ``--help`` can show
    that recipe."""
    from s7jax.config import RECIPES
    from s7jax.models import MODELS

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--model")
    pre.add_argument("--recipe")
    known, _ = pre.parse_known_args(argv)
    return (known.model if known.model in MODELS else "model6",
            known.recipe if known.recipe in RECIPES else "default")


def _config_fields():
    """``(field, parent)`` for every setting: Config's fields, with the
    augmentation's strengths (parent ``"augment"``) in place of ``augment``."""
    from s7jax.data.augment import AugmentConfig
    from s7jax.config import Config

    for f in dataclasses.fields(Config):
        if f.name == "augment":
            yield from ((g, "augment") for g in dataclasses.fields(AugmentConfig))
        else:
            yield f, None


# Config's annotations, as strings (``from __future__ import annotations``).
_PARSERS = {"int": int, "float": float, "str": str, "int | None": int}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_flags(p: argparse.ArgumentParser, argv=None) -> None:
    """One flag per :class:`s7jax.config.Config` field, its help from the
    field's metadata, plus ``--recipe`` and ``--no-augment``. A flag left out
    keeps the recipe's value, which ``--help`` shows in brackets for the
    ``--model`` and ``--recipe`` given."""
    from s7jax.config import RECIPES, default_config

    model, recipe = _recipe_choice(argv)
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
        shown = "all" if value is None and f.name.endswith("subset") else value
        help_text = f.metadata["help"]
        if f.name != "model":
            help_text += f" [{model}: {shown}]"
        groups[group].add_argument(_flag(f.name), help=help_text, **kwargs)
    groups["data"].add_argument("--no-augment", action="store_true",
                                help="train without augmentation")
    add_data_flags(groups["data"])


def add_data_flags(p, tfds: bool = True) -> None:
    """Where MNIST comes from: ``--manual-dir`` (and ``--data-dir`` where TFDS
    may be used)."""
    if tfds:
        p.add_argument("--data-dir", help="TFDS data_dir (default: TFDS's, honouring TFDS_DATA_DIR)")
    p.add_argument("--manual-dir", help="folder with the four official MNIST files and SHA256SUMS "
                                        "(default: the copy inside the package)")


def add_progress_flag(p) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")


def config_from_args(args: argparse.Namespace, **overrides):
    """The recipe (``--recipe``, for ``--model``) with every flag that was
    given applied."""
    from s7jax.data.augment import NO_AUGMENT
    from s7jax.config import default_config

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
    """The config flags set on the command line (``--recipe`` included), sorted."""
    names = [f.name for f, _ in _config_fields()] + ["recipe"]
    return sorted([_flag(n) for n in names if getattr(args, n, None) is not None]
                  + ["--no-augment"] * bool(args.no_augment))
