"""Regenerate the README's headline blocks and the docs' generated tables from results/.

    python scripts/report.py          # rewrite every generated block in place
    python scripts/report.py --check  # exit 1, naming each stale file, if one is out of date

Every number comes from the committed files (:mod:`.results`,
:mod:`.performance`) or, for the models table, from the models themselves.
Each block stands between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in
its file (:data:`BLOCKS`). Run it from the repository's root, or name the
checkout with ``--root`` and the results with ``--results``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

from s7jax.cli import OneLineErrorParser, exit_on_known_errors
from s7jax.errors import ConfigError
from tools.report import performance, results


def _models(results_dir: Path, write_plots: bool) -> str:
    from s7jax.models.summary import models_table

    return models_table()


# Each generated block: the file it lives in (from the checkout's root), its
# markers' name, and what writes it (from the results folder; the flag says
# whether to draw the figures again).
BLOCKS: list[tuple[str, str, Callable[[Path, bool], str]]] = [
    ("README.md", "models", _models),
    ("README.md", "headline-results", lambda r, plots: results.headline(r)),
    ("README.md", "headline-performance", lambda r, plots: performance.headline(r)),
    ("docs/results.md", "results", lambda r, plots: results.results_section(r, plots)),
    ("docs/performance.md", "performance", lambda r, plots: performance.performance_section(r)),
    ("docs/training.md", "refusals", lambda r, plots: performance.refusals_section(r)),
    ("docs/seeds.md", "seeds", lambda r, plots: performance.seeds_section(r)),
]


def replace_between(text: str, name: str, body: str, where: str = "the file") -> str:
    """``text`` with what stands between the markers of ``name`` replaced by ``body``."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    if begin not in text or end not in text:
        raise ConfigError(f"{where} lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body.strip()}\n{end}{tail}"


def generate(root: Path, results_dir: Path, write_plots: bool) -> dict[Path, tuple[str, str]]:
    """Every file with generated blocks: ``{path: (its text, the text with
    every block written again)}``."""
    pages: dict[Path, tuple[str, str]] = {}
    for rel, name, write in BLOCKS:
        path = root / rel
        if path not in pages:
            if not path.is_file():
                raise ConfigError(f"{path} not found: run from the repository's root, or pass --root")
            text = path.read_text()
            pages[path] = (text, text)
        old, new = pages[path]
        pages[path] = (old, replace_between(new, name, write(results_dir, write_plots), rel))
    return pages


def main(argv: list[str] | None = None) -> int:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="only check that every generated block is up to date")
    p.add_argument("--root", default=".",
                   help="the checkout whose README.md and docs/ to update (default .)")
    p.add_argument("--results", help="the results folder (default ROOT/results)")
    args = p.parse_args(argv)
    with exit_on_known_errors():
        root = Path(args.root)
        pages = generate(root, Path(args.results) if args.results else root / "results",
                         write_plots=not args.check)
        stale = [path for path, (old, new) in pages.items() if old != new]
        if args.check:
            for path in stale:
                print(f"{path} is out of date: run python scripts/report.py", file=sys.stderr)
            if not stale:
                print(f"up to date: {', '.join(map(str, pages))}")
            return 1 if stale else 0
        for path, (old, new) in pages.items():
            if old != new:
                path.write_text(new)
                print(f"wrote {path}")
        if not stale:
            print("every generated block was up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
