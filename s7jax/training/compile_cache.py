"""A persistent compilation cache (``$S7JAX_COMPILE_CACHE``, default ``~/.cache/s7jax/jax``;
``S7JAX_NO_COMPILE_CACHE=1`` turns it off): a second identical run loads its executables."""

from __future__ import annotations

import os
from pathlib import Path


def default_dir() -> Path:
    if os.environ.get("S7JAX_COMPILE_CACHE"):
        return Path(os.environ["S7JAX_COMPILE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "s7jax" / "jax"


def enable(directory: str | os.PathLike | None = None) -> Path | None:
    """The cache's folder, now in use (None: turned off)."""
    if os.environ.get("S7JAX_NO_COMPILE_CACHE", "").lower() not in ("", "0", "false", "no"):
        return None
    import jax

    path = Path(directory) if directory is not None else default_dir()
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Programs that compile in under half a second are not worth a file each.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
