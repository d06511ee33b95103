"""Three layers written for speed on XLA:CPU, same maths as the stock ones.

Measured on the 2-core CPU this project is developed on
(``python scripts/bench_step.py`` times each choice against the stock one in
one run), for model6's shapes at batch 128:

* 2x2 max pooling: ``nn.max_pool``'s gradient (``select_and_scatter``) is
  lowered by XLA:CPU to an arg-max over four materialised index arrays and
  a scatter, and took close to half of the train step. :func:`max_pool_2x2`
  takes the max of four strided views, records which of the four won, and
  routes the gradient by that index with elementwise selects: the values and
  the gradient of ``nn.max_pool``, tested inside the compiled train step.
* Dropout masks: ``jax.random.bernoulli`` costs more than the rest of a
  dropout layer several times over (XLA's ``RngBitGenerator`` on CPU).
  :class:`Dropout` draws two 32-bit words from the ``dropout`` rng and
  hashes each element's index with them instead: one random word per
  element, as before, from a keyed integer hash rather than a cipher. Being
  a function of the global element index, the mask is the same whatever the
  sharding.
* Convolution gradients: XLA:CPU runs a convolution fast when it is in its
  canonical form (batch-major input, ``HWIO`` kernel). In a single step its
  own passes rewrite both gradients into that form, but not inside a loop
  (``lax.scan``: ``--pipeline scan``), where the step took several times as
  long (``bench_step.py``'s lax.scan rows). :func:`conv` writes both
  gradients as canonical convolutions itself, so the step runs inside the
  epoch's loop as fast as alone, and computes the same state bit for bit.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from s7jax.models.seedwise import seedwise

_NHWC = ("NHWC", "HWIO", "NHWC")


def cpu_kernels() -> bool:
    """Whether the CPU formulations below apply (decided at trace time)."""
    return jax.default_backend() == "cpu"


def _canonical_conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_stride1(x, w, padding):
    return _canonical_conv(x, w, padding)


def _conv_fwd(x, w, padding):
    return _canonical_conv(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, g):
    x, w = residuals
    kh, kw = w.shape[:2]
    # Input gradient: g convolved with the flipped kernel, in and out swapped.
    flipped = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    full = [(k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip((kh, kw), padding)]
    dx = _canonical_conv(g, flipped, full)
    # Weight gradient: the input with batch and channels swapped, convolved
    # with g as the kernel (its batch axis contracted as input channels).
    dw = _canonical_conv(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(g, (1, 2, 0, 3)), padding)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


_conv_stride1.defvjp(_conv_fwd, _conv_bwd)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` (``nn.Conv(conv_general_dilated=conv)``).

    Takes the canonical-gradient path for what the study uses (NHWC, stride 1,
    no dilation, no groups, explicit padding) on CPU, and defers to XLA
    otherwise: on GPU and TPU XLA's own convolution passes handle gradients.
    """
    simple = (tuple(window_strides) == (1, 1) and feature_group_count == 1
              and not kwargs and precision is None
              and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
              and not isinstance(padding, str) and lhs.ndim == 4 and cpu_kernels())
    if simple:
        return _conv_stride1(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    **kwargs)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, NHWC (odd edges dropped, as VALID pooling
    does), whose gradient goes to the first maximum of each window in
    row-major order, as ``nn.max_pool``'s does."""
    return _pool_even(x[:, :x.shape[1] - x.shape[1] % 2, :x.shape[2] - x.shape[2] % 2, :])


def _window(x):
    """The four elements of each 2x2 window, in row-major order."""
    return x[:, 0::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 0::2], x[:, 1::2, 1::2]


@jax.custom_vjp
def _pool_even(x):
    # The max of four strided views: elementwise, so it fuses (a max-reduce
    # over a (B, H/2, 2, W/2, 2, C) reshape took a quarter of an evaluation).
    a, b, c, d = _window(x)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


def _pool_fwd(x):
    a, b, c, d = _window(x)
    top, bottom = jnp.maximum(a, b), jnp.maximum(c, d)
    # Which element of the window is the max (0-3, the first on ties),
    # decided once, from the values the max is taken of. The backward pass
    # routes by it and never compares x again: XLA may recompute x inside the
    # backward's fusion with other rounding, and a compare against the
    # forward's max then matched no element (a wrong gradient).
    winner = jnp.where(top >= bottom, jnp.where(a >= b, 0, 1), jnp.where(c >= d, 2, 3))
    return jnp.maximum(top, bottom), winner.astype(jnp.int8)


def _pool_bwd(winner, g):
    n, h, w, channels = g.shape
    # Elementwise selects, which fuse: XLA:CPU lowers nn.max_pool's gradient
    # (select_and_scatter) to an arg-max and a scatter, half of model6's step.
    a, b, c, d = (jnp.where(winner == k, g, jnp.zeros_like(g)) for k in range(4))
    rows = jnp.stack([jnp.stack([a, b], axis=3), jnp.stack([c, d], axis=3)], axis=2)
    return (rows.reshape(n, 2 * h, 2 * w, channels),)


_pool_even.defvjp(_pool_fwd, _pool_bwd)


def _mix(h):
    """murmur3's 32-bit finaliser: a bijection that scrambles every bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


# Drawn per key even under jax.vmap over seeds (s7jax.models.seedwise).
_two_words = seedwise(lambda key: jax.random.bits(key, (2,), jnp.uint32))


def keep_mask(key: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
    """Boolean mask, True with probability ``keep_prob``, from a JAX key."""
    k0, k1 = _two_words(key)
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
        stride *= shape[axis]
    # Two keyed rounds: with one, masks for different keys would be
    # re-indexings of a single fixed sequence.
    bits = _mix(_mix(index ^ k0) + k1)
    return bits < jnp.uint32(min(int(keep_prob * 2**32), 2**32 - 1))


class Dropout(nn.Module):
    """Inverted dropout like ``nn.Dropout`` (same rate, rng stream and scaling),
    with the cheaper mask of :func:`keep_mask`."""

    rate: float
    deterministic: bool = False

    @nn.compact
    def __call__(self, x):
        if self.deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = keep_mask(self.make_rng("dropout"), x.shape, keep)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))
