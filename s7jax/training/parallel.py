"""Data parallelism with JAX's sharding: the batch split along one mesh axis,
``data``, the state replicated. BatchNorm statistics and the loss are over
the global batch, so N devices train the same model as one."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s7jax.errors import ConfigError

DATA_AXIS = "data"


def all_devices() -> list:
    """``jax.devices()``, or one line where ``JAX_PLATFORMS`` names an absent platform."""
    try:
        return jax.devices()
    except (RuntimeError, AssertionError) as e:  # JAX asserts where CUDA finds no GPU
        wanted = os.environ.get("JAX_PLATFORMS", "")
        raise ConfigError(f"JAX_PLATFORMS={wanted} but no {wanted} device: "
                          f"{(str(e).splitlines() or ['none found'])[0]}") from None


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device JAX sees)."""
    devices = all_devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split across the ``data`` axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def stacked_batch_sharded(mesh: Mesh) -> NamedSharding:
    """Stacked batches ``(n, B, ...)``: each batch split across ``data``."""
    return NamedSharding(mesh, P(None, DATA_AXIS))


def check_divisible(batch_size: int, mesh: Mesh, what: str = "batch size") -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ConfigError(f"the {what} ({batch_size}) must be divisible by the number of devices ({n})")


def describe(mesh: Mesh) -> str:
    devices = mesh.devices.ravel()
    kinds = sorted({d.device_kind for d in devices})
    return f"mesh {dict(mesh.shape)} over {len(devices)} x {'/'.join(kinds)} ({jax.default_backend()})"
