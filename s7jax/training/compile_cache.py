"""A persistent compilation cache (``$S7JAX_COMPILE_CACHE``, default ``~/.cache/s7jax/jax``;
``S7JAX_NO_COMPILE_CACHE=1`` turns it off): a second identical run loads its executables."""

from __future__ import annotations

import os
from pathlib import Path


def enable() -> Path | None:
    """The cache's folder, now in use (None: turned off)."""
    if os.environ.get("S7JAX_NO_COMPILE_CACHE", "").lower() not in ("", "0", "false", "no"):
        return None
    import jax

    path = Path(os.environ.get("S7JAX_COMPILE_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "s7jax" / "jax")
    jax.config.update("jax_compilation_cache_dir", str(path))
    # Programs that compile in under half a second are not worth a file each.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
