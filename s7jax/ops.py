"""Two layers written for speed on XLA:CPU, same maths as the stock ones.

Measured on the 2-core CPU this project is developed on (``scripts/bench.py``
has the end-to-end figures), for model6's shapes at batch 128:

* The weight gradient of a 3x3 convolution: XLA lowers it to a convolution
  that runs ~5x slower than the forward pass (44 ms vs 5.5 ms for conv2,
  8 -> 12 channels at 28x28). Written as nine shifted ``(N, Cin)^T (N, Cout)``
  matrix products it takes ~9 ms. :func:`conv` keeps XLA's forward and input
  gradient and swaps in that weight gradient.
* Dropout masks: ``jax.random.bernoulli`` costs 10-14 ms per (128, 28, 28, 12)
  mask (threefry or rbg), a third of a model6 step. :class:`Dropout` draws
  two 32-bit words from the ``dropout`` rng and hashes each element's index
  with them instead (0.9 ms): one random word per element, as before, from a
  keyed integer hash rather than a cipher. Being a function of the global
  element index, the mask is the same whatever the sharding.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from s7jax.seedwise import seedwise

_NHWC = ("NHWC", "HWIO", "NHWC")


def _xla_conv(x, w, padding):
    return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_stride1(x, w, padding):
    return _xla_conv(x, w, padding)


def _conv_fwd(x, w, padding):
    return _xla_conv(x, w, padding), (x, w)


def _conv_bwd(padding, residuals, g):
    x, w = residuals
    _, x_vjp = jax.vjp(lambda x: _xla_conv(x, w, padding), x)
    (dx,) = x_vjp(g)
    kh, kw, cin, cout = w.shape
    height, width = g.shape[1], g.shape[2]
    xp = jnp.pad(x, [(0, 0), padding[0], padding[1], (0, 0)])
    # The barrier keeps XLA from fusing the slices into the matmuls, which
    # sends them down a slow generic path.
    shifts = lax.optimization_barrier(
        [xp[:, i:i + height, j:j + width, :] for i in range(kh) for j in range(kw)])
    g2 = g.reshape(-1, cout)
    dw = jnp.stack([s.reshape(-1, cin).T @ g2 for s in shifts]).reshape(kh, kw, cin, cout)
    return dx, dw


_conv_stride1.defvjp(_conv_fwd, _conv_bwd)


def cpu_kernels() -> bool:
    """Whether to trace the CPU formulations of this module: on XLA:CPU they
    are faster; on a GPU or TPU, XLA's own kernels are. Decided at trace time,
    in one place, so that a test can lower what an accelerator runs."""
    return jax.default_backend() == "cpu"


def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
         dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for ``lax.conv_general_dilated`` (``nn.Conv(conv_general_dilated=conv)``).

    Takes the fast path for what the study uses (NHWC, stride 1, no dilation,
    no groups, explicit padding) on CPU and defers to XLA otherwise.
    """
    simple = (tuple(window_strides) == (1, 1) and feature_group_count == 1
              and not kwargs and precision is None
              and all(d in (None, 1, (1, 1)) for d in (lhs_dilation, rhs_dilation))
              and not isinstance(padding, str) and lhs.ndim == 4
              and cpu_kernels())
    if simple:
        return _conv_stride1(lhs, rhs, tuple(tuple(int(p) for p in pair) for pair in padding))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    **kwargs)


def _mix(h):
    """murmur3's 32-bit finaliser: a bijection that scrambles every bit."""
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    return h ^ (h >> 16)


# Drawn per key even under jax.vmap over seeds (s7jax.seedwise).
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
