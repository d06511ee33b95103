"""Every compiled program of training lowers for TPU and for CUDA.

A GPU or TPU is lent to this project only now and then, so what would break
there must show here, on the CPU, on every CI run. ``jax.export`` lowers a
program for a platform this machine does not have; the lowered StableHLO
must hold no custom call outside :data:`ALLOWED_CUSTOM_CALLS` (a kernel that
exists on one platform only) and no host callback (a round trip to Python
that would stall an epoch program, and that a TPU pod cannot run).

``s7jax.models.ops`` picks its CPU formulations at trace time (``ops.cpu_kernels``);
the test makes it answer as the target platform would, so that what is
lowered is what an accelerator runs.
"""

from __future__ import annotations

import re

import jax
import numpy as np
import pytest
from jax import export

from s7jax import data
from s7jax.training import parallel
from s7jax.data.augment import AugmentConfig
from s7jax.config import default_config
from s7jax.models import get_model
from s7jax.training.steps import initial_state, learning_rate_schedule, make_batch_stats_fn
from s7jax.training.loops import jit_epoch_program, jit_steps, stack

PLATFORMS = ("tpu", "cuda")
# Custom calls XLA resolves on every platform: sharding annotations
# (jax.lax.with_sharding_constraint and jit's in/out shardings).
ALLOWED_CUSTOM_CALLS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}
HOST_CALLBACK = re.compile(r"callback", re.IGNORECASE)

BATCH, EVAL_BATCH, CALIBRATION = 32, 64, 96


def custom_call_targets(text: str) -> set[str]:
    """Every custom-call target named in StableHLO text, in either spelling."""
    return (set(re.findall(r"stablehlo\.custom_call\s+@([\w.$-]+)", text))
            | set(re.findall(r'call_target_name\s*=\s*"([^"]+)"', text)))


def split(n: int, seed: int) -> data.Split:
    rng = np.random.default_rng(seed)
    return data.Split(rng.integers(0, 256, (n, 28, 28, 1), np.uint8),
                      rng.integers(0, 10, n).astype(np.int32))


def programs(model: str):
    """``(name, jitted function, example arguments)`` of every program a run
    of ``model`` compiles: the step-by-step loop's train steps and eval step,
    the BN re-estimation, the on-device pipeline's permutation and batch, the
    epoch program of ``--pipeline scan``, and two seeds as one program."""
    mesh = parallel.make_mesh()
    replicated, sharded = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    config = default_config(model, batch_size=BATCH, eval_batch_size=EVAL_BATCH,
                            precise_bn=CALIBRATION if model == "model6" else 0)
    state, key = initial_state(config, learning_rate_schedule(config, 4))
    source = data.DeviceTrainData.create(split(4 * BATCH, 0), batch_size=BATCH, seed=0,
                                         augment=AugmentConfig(), epochs=2, clean_epochs=1,
                                         replicated=replicated)
    test = data.eval_batches(split(100, 1), batch_size=EVAL_BATCH)
    batch = {k: v[0] for k, v in test.items() if k != "mask"}
    eval_batch = {k: v[0] for k, v in test.items()}
    stats_fn = make_batch_stats_fn(get_model(model)) if config.precise_bn else None
    calibration = data.normalize(split(CALIBRATION, 2).images) if stats_fn else None
    train_steps, eval_step = jit_steps(mesh)
    seeds_source, seeds_axes = source.for_seeds([0, 1])
    seeds_args = (stack([state, state]), seeds_source, stack([key, key]), np.int32(0),
                  None if calibration is None else np.stack([calibration] * 2), test)
    found = [
        ("train_step", train_steps, (state, (batch,), key)),
        ("train_steps_x2", train_steps, (state, (batch, batch), key)),
        ("eval_step", eval_step, (state, eval_batch)),
        ("device_order", jax.jit(data.DeviceTrainData.order), (source, 0)),
        ("device_batch", jax.jit(data.DeviceTrainData.batch, out_shardings=sharded),
         (source, np.arange(4 * BATCH), 1)),
        ("epoch_program", jit_epoch_program(stats_fn, EVAL_BATCH, mesh),
         (state, source, key, np.int32(0), calibration, test)),
        ("seeds_program", jit_epoch_program(stats_fn, EVAL_BATCH, mesh, seeds_axes), seeds_args),
    ]
    if stats_fn is not None:
        found.append(("precise_bn", stats_fn,
                      ({"params": state.params, "batch_stats": state.batch_stats},
                       calibration[:EVAL_BATCH])))
    return found


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("model", ["model6", pytest.param("model1", marks=pytest.mark.slow)])
def test_every_training_program_lowers_without_platform_specific_calls(model, platform,
                                                                       monkeypatch):
    """model6 has every kind of layer (BatchNorm, dropout, the bias-free
    convolutions) and the BN re-estimation; model1, the plain convolutions of
    the largest model."""
    monkeypatch.setattr("s7jax.models.ops.cpu_kernels", lambda: False)  # trace as the accelerator
    lowered = {}
    for name, fn, args in programs(model):
        exported = export.export(fn, platforms=[platform])(*args)
        assert exported.platforms == (platform,)
        text = exported.mlir_module()
        lowered[name] = text
        unexpected = custom_call_targets(text) - ALLOWED_CUSTOM_CALLS
        assert not unexpected, f"{name} on {platform}: custom calls {sorted(unexpected)}"
        assert not HOST_CALLBACK.search(text), f"{name} on {platform}: a host callback"
    # The epoch program holds the whole epoch: its steps, and the evaluation.
    assert "stablehlo.while" in lowered["epoch_program"]
    assert "stablehlo.convolution" in lowered["epoch_program"]


def test_the_check_finds_custom_calls_and_callbacks():
    """What the test above looks for is there when a program has it."""
    def with_callback(x):
        return jax.pure_callback(lambda v: v, jax.ShapeDtypeStruct(x.shape, x.dtype), x) + 1

    x = np.ones((4,), np.float32)
    text = jax.jit(with_callback).lower(x).as_text()
    assert HOST_CALLBACK.search(text)
    assert custom_call_targets(text) - ALLOWED_CUSTOM_CALLS  # lowered as a custom call on CPU
    sharded = jax.jit(lambda v: jax.lax.with_sharding_constraint(
        v, parallel.replicated(parallel.make_mesh())) * 2).lower(x).as_text()
    assert custom_call_targets(sharded) <= ALLOWED_CUSTOM_CALLS
