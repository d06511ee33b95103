"""Checksums saved with what they cover and checked before use: a flipped
byte keeps sizes and shapes, and loads as a model that predicts at random."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import numpy as np


def arrays_sha256(tree: Any, *, scalars_as_vectors: bool = True) -> str:
    """The hex SHA-256 of every array in ``tree``: floats bit for bit, integers
    by value as int64 (Orbax may restore an int32 step as int64). A 0-d array is
    described with shape (1,), as every checkpoint before this one was written;
    ``scalars_as_vectors=False`` gives shape (), as a few were."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        array = np.asarray(leaf)
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        shape = array.shape or ((1,) if scalars_as_vectors else ())
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def arrays_match(tree: Any, saved: str) -> bool:
    """Whether ``tree`` is what ``saved`` (an :func:`arrays_sha256`) was computed from."""
    return (saved == arrays_sha256(tree)
            or saved == arrays_sha256(tree, scalars_as_vectors=False))  # hashed again only then


def record_sha256(record: dict) -> str:
    """The hex SHA-256 of a JSON record (Python's floats survive JSON exactly)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
