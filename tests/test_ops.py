"""The fast convolutions, max-pool and dropout compute what the stock ones do,
compiled with XLA's optimisations on, as in a run."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s7jax.models import ops

pytestmark = pytest.mark.usefixtures("xla_optimized")


@pytest.mark.parametrize("cin,cout,size,pad", [(1, 8, 28, 1), (8, 12, 28, 1), (10, 14, 7, 0)])
def test_conv_and_its_gradients_match_lax(cin, cout, size, pad):
    """The canonical gradients are the convolution's gradients (up to the
    order of float sums), for SAME and VALID padding, inside jit and scan."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, size, size, cin)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    padding = ((pad, pad), (pad, pad))

    def loss(conv):
        def f(x, w):
            y = conv(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
            return jnp.sum(jnp.sin(y))  # a non-trivial cotangent
        return f

    ours = jax.jit(jax.value_and_grad(loss(ops.conv), argnums=(0, 1)))(x, w)
    in_loop = jax.lax.scan(lambda c, _: (c, jax.value_and_grad(loss(ops.conv), argnums=(0, 1))(x, w)),
                           0, None, length=1)[1]
    ref = jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
    chex.assert_trees_all_close(ours, ref, rtol=2e-4, atol=2e-4)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], in_loop), ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("shape", [(3, 28, 28, 8), (2, 7, 9, 5)])
def test_depthwise_conv_and_its_gradients_match_lax_grouped(shape):
    """Nine shifted multiply-adds are the grouped convolution (one kernel per
    channel, zero padding 1), gradients included, inside jit and scan."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 1, shape[-1])), jnp.float32)

    def grouped(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)),
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            feature_group_count=x.shape[-1])

    def loss(conv):
        return jax.value_and_grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w))), argnums=(0, 1))

    ours = jax.jit(loss(ops.depthwise_conv_3x3))(x, w)
    in_loop = jax.lax.scan(lambda c, _: (c, loss(ops.depthwise_conv_3x3)(x, w)), 0, None, length=1)[1]
    ref = loss(grouped)(x, w)
    chex.assert_trees_all_close(ours, ref, rtol=2e-4, atol=2e-4)
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], in_loop), ref, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("shape", [(4, 28, 28, 12), (3, 14, 14, 10), (2, 7, 9, 3)])
def test_max_pool_and_its_gradient_equal_flax_bit_for_bit(shape):
    """Values and gradient equal nn.max_pool's exactly, ties included: after a
    ReLU most windows hold several equal maxima, and the gradient must go to
    the first of them (row-major), as select_and_scatter sends it. Odd edges
    are dropped, as VALID pooling drops them."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(np.maximum(rng.integers(-3, 3, shape), 0), jnp.float32)
    stock = lambda x: nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))  # noqa: E731
    y, vjp = jax.vjp(jax.jit(ops.max_pool_2x2), x)
    y_ref, vjp_ref = jax.vjp(stock, x)
    g = jnp.asarray(rng.normal(size=y_ref.shape), jnp.float32)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
    assert float(jnp.sum(vjp(g)[0] != 0)) <= y.size  # one route per window


def test_keep_mask_rate_and_independence():
    key = jax.random.key(0, impl="rbg")
    a = ops.keep_mask(key, (64, 28, 28, 8), 0.9)
    b = ops.keep_mask(jax.random.fold_in(key, 1), (64, 28, 28, 8), 0.9)
    n = a.size
    assert abs(float(a.mean()) - 0.9) < 4 * np.sqrt(0.09 / n)
    # Independent masks agree where both keep or both drop: 0.9^2 + 0.1^2.
    agree = float((a == b).mean())
    assert abs(agree - 0.82) < 4 * np.sqrt(0.82 * 0.18 / n)
    np.testing.assert_array_equal(a, ops.keep_mask(key, (64, 28, 28, 8), 0.9))


def test_dropout_scales_kept_units_and_is_identity_in_eval():
    x = jnp.ones((16, 8, 8, 4))
    layer = ops.Dropout(0.25)
    y = layer.apply({}, x, rngs={"dropout": jax.random.key(1, impl="rbg")})
    kept = np.asarray(y) != 0
    np.testing.assert_allclose(np.asarray(y)[kept], 1 / 0.75, rtol=1e-6)
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_array_equal(ops.Dropout(0.25, deterministic=True).apply({}, x), x)
