"""Regenerate the README's Results and Performance sections from results/.

    python scripts/report.py          # rewrite README.md in place
    python scripts/report.py --check  # exit 1 if README.md is out of date

(or ``s7jax-report``, or ``python -m tools.report.readme``). Every
number comes from the committed files (:mod:`.results`, :mod:`.performance`);
run it from the repository's root, or name the files with ``--readme`` and
``--results``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from s7jax.cli import OneLineErrorParser, exit_on_known_errors
from s7jax.errors import ConfigError
from tools.report.performance import performance_section
from tools.report.results import results_section

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
PERF_BEGIN, PERF_END = "<!-- performance:begin -->", "<!-- performance:end -->"


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what stands between the markers ``begin`` and ``end``
    replaced by ``body``."""
    if begin not in text or end not in text:
        raise ConfigError(f"the README lacks the markers {begin} ... {end}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{body}\n{end}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = OneLineErrorParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    p.add_argument("--readme", default="README.md", help="the README to update (default ./README.md)")
    p.add_argument("--results", default="results", help="the results folder (default ./results)")
    args = p.parse_args(argv)
    with exit_on_known_errors():
        readme = Path(args.readme)
        text = readme.read_text()
        new = replace_between(text, BEGIN, END, results_section(Path(args.results), not args.check))
        new = replace_between(new, PERF_BEGIN, PERF_END, performance_section(Path(args.results)))
        if args.check:
            if new != text:
                print("README.md is out of date: run python scripts/report.py", file=sys.stderr)
                return 1
            print("README.md is up to date")
            return 0
        readme.write_text(new)
        print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
