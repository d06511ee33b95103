"""Random draws that stay those of their own seed under ``jax.vmap``.

JAX's ``rbg`` keys (``s7jax.training.steps.PRNG_IMPL``) are cheap on every backend,
but their random bits are not vmap-invariant: drawn under ``jax.vmap`` over
a batch of keys, they differ from the bits each key gives on its own
(``split`` and ``fold_in`` do agree). :func:`seedwise` wraps a function that
draws random bits so that, when vmapped (over seeds, in ``s7jax.training.seeds``), it
runs once per key in a loop (``lax.map``) instead: each seed then sees
exactly the numbers of its own single run. Unbatched, the wrapped function is
the function itself. The draws it guards are small (two words per dropout
layer, three uniforms per image, one permutation per epoch), so the loop
costs little next to the convolutions, which stay vectorised.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax import custom_batching


def seedwise(f: Callable) -> Callable:
    """``f`` itself, except that ``jax.vmap`` maps it sequentially (``lax.map``).

    Every argument of ``f`` is traced (its defaults too): close over static
    values (shapes, configs) instead of passing them."""
    g = custom_batching.custom_vmap(f)

    @g.def_vmap
    def _one_at_a_time(axis_size, in_batched, *args):
        def batched(x, is_batched):
            return x if is_batched else jnp.broadcast_to(x, (axis_size, *jnp.shape(x)))

        args = jax.tree.map(batched, args, tuple(in_batched))
        out = jax.lax.map(lambda a: f(*a), args)
        return out, jax.tree.map(lambda _: True, out)

    return g
