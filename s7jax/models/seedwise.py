"""Seeds in one program. Random draws that stay those of their own seed under
``jax.vmap``: the bits of JAX's ``rbg`` keys drawn under ``jax.vmap`` over
keys differ from each key's own (``split`` and ``fold_in`` agree), so
:func:`seedwise` draws once per key (``lax.map``); the draws are small, so the
loop costs little. And :func:`over_seeds`, a program over a seed axis."""

from __future__ import annotations

import functools
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


def over_seeds(run: Callable, in_axes: tuple, strategy: str) -> Callable:
    """``run`` over a leading seed axis of the arguments ``in_axes`` marks 0
    (``None``: shared): ``vmap``, one batched program (its convolutions grouped
    over the seeds), or ``map``, the seeds one after another inside the program
    (``lax.map``), each computing as its own run."""
    def program(*args, first=0):
        one = functools.partial(run, first=first)
        if strategy == "vmap":
            return jax.vmap(one, in_axes=in_axes)(*args)
        shared = lambda axis: axis is None  # noqa: E731
        mapped = jax.tree.map(lambda axis, a: None if shared(axis) else a, in_axes, args,
                              is_leaf=shared)
        return jax.lax.map(lambda xs: one(*jax.tree.map(
            lambda axis, a, x: a if shared(axis) else x, in_axes, args, xs, is_leaf=shared)),
            mapped)

    return program
