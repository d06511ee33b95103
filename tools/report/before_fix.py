"""The runs trained before the max-pool gradient fix, and their mark.

``results/before-the-pool-fix.txt`` lists them (one folder or glob per line,
relative to ``results/``); every table and line of the report that shows such
a run carries :data:`MARK`, and the block it stands in ends with
:func:`footnote`.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "before-the-pool-fix.txt"
MARK = "†"


def patterns(results_dir: Path) -> list[str]:
    path = Path(results_dir) / MANIFEST
    if not path.is_file():
        return []
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def before_fix(results_dir: Path, run: Path) -> bool:
    """Whether ``run`` (a folder under ``results_dir``), or a folder above it,
    is listed."""
    parts = Path(run).relative_to(results_dir).parts
    listed = patterns(results_dir)
    return any(fnmatch.fnmatchcase("/".join(parts[:i]), p)
               for i in range(1, len(parts) + 1) for p in listed)


def seed_runs(results_dir: Path, model: str, runs: dict[str, Any], kind: str = "default",
              under: Path | None = None) -> list[Path]:
    """The folders of :func:`s7jax.runs.results.runs_of`'s ``runs`` (under
    ``under``, ``results_dir`` by default)."""
    from s7jax.runs import results

    return [results.run_dir(under or results_dir, model, int(s), kind) for s in runs["seeds"]]


def mark(results_dir: Path, runs: Iterable[Path]) -> str:
    """:data:`MARK` where any of ``runs`` is listed, else nothing."""
    return MARK if any(before_fix(results_dir, r) for r in runs) else ""


def footnote(lines: list[str]) -> list[str]:
    """``lines``, followed by the mark's footnote where any of them carries it."""
    if not any(MARK in line for line in lines):
        return lines
    return [*lines, "", f"{MARK} Trained before the max-pool gradient fix (CHANGELOG.md); "
            "`results/before-the-pool-fix.txt` lists these runs."]
