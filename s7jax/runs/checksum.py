"""A checksum of a tree of arrays, saved with them and checked before use.

A flipped byte in an array file need not change its size, its format or its
shapes: read back, it is a valid model that predicts at random. So weights
files and checkpoints carry the SHA-256 of their arrays (each leaf's path,
dtype, shape and bytes, in tree order), and a load that does not find the
same figure refuses the file.
"""

from __future__ import annotations

import hashlib
from typing import Any

import jax
import numpy as np


def arrays_sha256(tree: Any) -> str:
    """The hex SHA-256 of every array in ``tree`` (fetched to the host).
    Integers count by value, as int64: a train state's step is an int32
    array when saved, and may come back as int64 (Orbax restores it in the
    type of the target's plain-int step); floats count bit for bit."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
        array = np.asarray(leaf)
        if array.dtype.kind in "iu":
            array = array.astype(np.int64)
        array = np.ascontiguousarray(array)
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
