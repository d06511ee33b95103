"""Four layers written for speed on XLA:CPU, with the stock ones' maths.
``scripts/bench_step.py`` times the first three against the stock ones
(model6, batch 128; model6 has no depthwise convolution):

* :func:`max_pool_2x2`: XLA:CPU lowers ``nn.max_pool``'s gradient to an
  arg-max and a scatter, close to half of the train step; here it is routed
  by the window's recorded winner with elementwise selects.
* :class:`Dropout`: ``jax.random.bernoulli`` costs several times the rest of
  the layer on CPU; the mask hashes each element's global index with two
  random words instead (the same mask whatever the sharding).
* :func:`conv`: XLA:CPU runs a convolution fast in its canonical form, and
  rewrites the gradients into it in a single step but not inside
  ``lax.scan`` (``--pipeline scan``), where the step took several times as
  long; here both gradients are canonical convolutions.
* :func:`depthwise_conv_3x3`: XLA:CPU runs a grouped convolution (one
  kernel per channel) several times slower than the whole rest of model7-h's
  epoch; here it is nine shifted multiply-adds, whose gradients are as plain.
"""

from __future__ import annotations

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


_conv_stride1 = jax.custom_vjp(_canonical_conv, nondiff_argnums=(2,))
_conv_stride1.defvjp(_conv_fwd, _conv_bwd)


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated``: the canonical-gradient path
    for what the study uses (NHWC, stride 1, explicit padding) on CPU, XLA's
    own elsewhere (on GPU and TPU its passes handle the gradients)."""
    simple = (tuple(window_strides) == (1, 1) and feature_group_count == 1
              and not kwargs and precision is None
              and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
              and not isinstance(padding, str) and lhs.ndim == 4 and cpu_kernels())
    if simple:
        return _conv_stride1(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    **kwargs)


def depthwise_conv_3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """3x3 depthwise convolution, stride 1, zero padding 1: NHWC ``x``, each
    channel convolved with its own 3x3 kernel, ``kernel`` of shape (3, 3, 1, C)
    as ``lax.conv_general_dilated`` with ``feature_group_count=C`` takes it."""
    if not cpu_kernels():
        return lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=_NHWC,
                                        feature_group_count=x.shape[-1])
    height, width = x.shape[1:3]
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return sum(padded[:, i:i + height, j:j + width, :] * kernel[i, j, 0]
               for i in range(3) for j in range(3))


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2, NHWC (odd edges dropped); the gradient goes
    to each window's first maximum in row-major order, as ``nn.max_pool``'s."""
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
