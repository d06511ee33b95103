"""The compiled train step computes the gradient of its loss.

Every test here compiles with XLA's optimisations on (``xla_optimized``), as
runs do: the fusions they make are where a hand-written gradient can go
wrong (a max-pool gradient that compared a recomputed input against the
forward's max matched nothing under fusion, and sent model3's and model6's
pool gradients to the wrong element). The reference is the same step with
the stock layers (``nn.max_pool``, ``lax.conv_general_dilated``), and for
model6 also the step run op by op (``jax.disable_jit``), where nothing is
fused.

The gradient is read from the state after one step: with SGD and momentum,
the momentum trace after the first step is the gradient (plus the weight
decay's ``wd * params``, the same on both sides).
"""

from __future__ import annotations

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s7jax.config import default_config
from s7jax.models import STUDY, ops, study
from s7jax.training import steps
from s7jax.training.loops import stack

pytestmark = pytest.mark.usefixtures("xla_optimized")

# Within this fraction of each leaf's scale (its largest entry).
TOLERANCE = 1e-4


def first_step_state(name: str, seed: int = 0) -> steps.TrainState:
    config = default_config(name, seed=seed)
    state, _ = steps.initial_state(config, steps.learning_rate_schedule(config, 10))
    return state


def a_batch(n: int = 32, seed: int = 0) -> steps.Batch:
    rng = np.random.default_rng(seed)
    return {"image": jnp.asarray(rng.normal(size=(n, 28, 28, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, n), jnp.int32)}


def gradient(state: steps.TrainState):
    """The first step's gradient, from the momentum trace (see above)."""
    return optax.tree_utils.tree_get(state.opt_state, "trace")


def assert_gradients_close(got, want):
    """Each leaf within TOLERANCE of its scale. A convolution's bias before a
    BatchNorm has a true gradient of zero (the BN's mean removes it): where
    the reference is below 1e-3 of the largest leaf's scale, both sides must
    be that small, rounding noise around zero."""
    largest = max(float(jnp.max(jnp.abs(w))) for w in jax.tree.leaves(want))
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want)):
        scale = float(jnp.max(jnp.abs(w)))
        if scale < 1e-3 * largest:
            assert float(jnp.max(jnp.abs(g))) < 1e-3 * largest, jax.tree_util.keystr(path)
            continue
        error = float(jnp.max(jnp.abs(g - w)))
        assert error <= TOLERANCE * scale, (
            f"{jax.tree_util.keystr(path)}: off by {error / scale:.1e} of its scale")


@contextlib.contextmanager
def stock_layers():
    """The models built with Flax's max-pool and lax's convolution gradients."""
    pool, conv = ops.max_pool_2x2, study.Conv3x3
    ops.max_pool_2x2 = lambda x: nn.max_pool(x, window_shape=(2, 2), strides=(2, 2))
    study.Conv3x3 = functools.partial(nn.Conv, kernel_size=(3, 3), strides=(1, 1))
    try:
        yield
    finally:
        ops.max_pool_2x2, study.Conv3x3 = pool, conv


def stock_step(state, batch, key):
    with stock_layers():
        return jax.jit(lambda *args: steps.train_step(*args))(state, batch, key)


@pytest.mark.parametrize("name", [*STUDY, pytest.param("model7", marks=pytest.mark.slow)])
def test_the_jitted_train_step_follows_the_gradient(name):
    state, batch = first_step_state(name), a_batch(8 if name == "model1" else 32)
    key = jax.random.key(1, impl=steps.PRNG_IMPL)
    ours, _ = jax.jit(steps.train_step)(state, batch, key)
    assert_gradients_close(gradient(ours), gradient(stock_step(state, batch, key)[0]))


@pytest.mark.slow
def test_the_jitted_train_step_follows_the_gradient_op_by_op():
    state, batch = first_step_state("model6"), a_batch(32)
    key = jax.random.key(1, impl=steps.PRNG_IMPL)
    ours, _ = jax.jit(steps.train_step)(state, batch, key)
    with jax.disable_jit():
        reference, _ = steps.train_step(state, batch, key)
    assert_gradients_close(gradient(ours), gradient(reference))


# The quick part keeps the two models whose pool gradient went wrong before;
# the slow part runs all six and model7.
@pytest.mark.parametrize("name", [name if name in ("model3", "model6")
                                  else pytest.param(name, marks=pytest.mark.slow)
                                  for name in [*STUDY, "model7"]])
def test_scanned_and_vmapped_steps_follow_the_gradient(name):
    """The programs of ``--pipeline scan`` (steps inside ``lax.scan``) and of
    seeds trained together (that, vmapped over seeds), seed by seed."""
    seeds = (0, 1)
    states = [first_step_state(name, s) for s in seeds]
    batches = [a_batch(8 if name == "model1" else 32, s) for s in seeds]
    keys = [jax.random.key(10 + s, impl=steps.PRNG_IMPL) for s in seeds]

    def scanned(state, batch, key):
        stacked = jax.tree.map(lambda x: x[None], batch)
        return jax.lax.scan(lambda s, b: (steps.train_step(s, b, key)[0], None), state, stacked)[0]

    together = jax.jit(jax.vmap(scanned))(stack(states), stack(batches), jnp.stack(keys))
    for i, (state, batch, key) in enumerate(zip(states, batches, keys)):
        want = gradient(stock_step(state, batch, key)[0])
        assert_gradients_close(gradient(jax.jit(scanned)(state, batch, key)), want)
        assert_gradients_close(jax.tree.map(lambda x: x[i], gradient(together)), want)


def test_dropout_masks_are_each_seeds_own_under_vmap():
    keys = jax.random.split(jax.random.key(3, impl=steps.PRNG_IMPL), 3)
    masks = jax.jit(jax.vmap(lambda k: ops.keep_mask(k, (16, 14, 14, 8), 0.9)))(keys)
    for key, mask in zip(keys, masks):
        np.testing.assert_array_equal(mask, jax.jit(ops.keep_mask, static_argnums=(1, 2))(
            key, (16, 14, 14, 8), 0.9))
