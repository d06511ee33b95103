"""Random draws that stay those of their own seed under ``jax.vmap``: the
bits of JAX's ``rbg`` keys drawn under ``jax.vmap`` over keys differ from each
key's own (``split`` and ``fold_in`` agree), so :func:`seedwise` draws once
per key (``lax.map``). The draws are small, so the loop costs little."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import custom_batching


def seedwise(f: Callable) -> Callable:
    """``f``, but mapped sequentially under ``jax.vmap``. Every argument is
    traced: close over static values (shapes, configs) instead."""
    g = custom_batching.custom_vmap(f)

    @g.def_vmap
    def _one_at_a_time(axis_size, in_batched, *args):
        def batched(x, is_batched):
            return x if is_batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        args = jax.tree.map(batched, args, tuple(in_batched))
        out = jax.lax.map(lambda a: f(*a), args)
        return out, jax.tree.map(lambda _: True, out)

    return g
