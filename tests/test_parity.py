"""Parity with PyTorch: each Flax model, its weights ported into the network
that ``s7jax.reference.torch_reference`` builds from the spec, computes the same
log-probabilities. Skipped when PyTorch is not installed."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch_port as port  # noqa: E402  (tests/torch_port.py)
from s7jax.reference import torch_reference as tr  # noqa: E402
from s7jax.data import MEAN, STD  # noqa: E402
from s7jax.models import STUDY, count_params, get_model, init_variables  # noqa: E402

# Compared at float32 tolerances: full float32 matmuls on every backend.
pytestmark = pytest.mark.usefixtures("highest_precision", "xla_optimized")
ATOL = 1e-4
BN_MODELS = ["model3", "model4", "model5", "model6"]


def key(seed):
    return jax.random.key(seed, impl="rbg")


def normalised_images(batch_size: int, seed: int = 0) -> np.ndarray:
    """Sparse random images in [0, 1] (70% black pixels, like MNIST's
    background), normalised as the data pipeline does: NHWC float32."""
    rng = np.random.default_rng(seed)
    shape = (batch_size, 28, 28, 1)
    x = rng.uniform(0.0, 1.0, size=shape) * (rng.uniform(size=shape) < 0.3)
    return ((x - MEAN) / STD).astype(np.float32)


def perturbed(variables, seed: int):
    """Flax's init leaves biases at 0, BN at scale 1 / shift 0 and running
    statistics at mean 0 / var 1: a port that dropped or swapped any of them
    would go unnoticed. Give every one of them a distinct random value."""
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: _perturb(rng, path[-1].key, np.asarray(x)), variables["params"])
    stats = {
        layer: {"mean": rng.normal(0.0, 0.2, s["mean"].shape).astype(np.float32),
                "var": rng.uniform(0.5, 2.0, s["var"].shape).astype(np.float32)}
        for layer, s in variables.get("batch_stats", {}).items()
    }
    return {"params": params, "batch_stats": stats}


def _perturb(rng, name, x):
    if name == "bias":
        return (x + rng.normal(0.0, 0.1, x.shape)).astype(np.float32)
    if name == "scale":
        return (x * rng.uniform(0.5, 1.5, x.shape)).astype(np.float32)
    return x


@functools.cache
def flax_variables(name: str):
    return perturbed(dict(init_variables(get_model(name), key(7))), seed=int(name[-1]))


def flax_log_probs(name: str, variables, images: np.ndarray) -> np.ndarray:
    model = get_model(name)
    # Full float32 on every backend (TF32 on a GPU would be off by ~1e-3).
    with jax.default_matmul_precision("highest"):
        out = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, jnp.asarray(images))
    return np.asarray(out)


@pytest.mark.parametrize("name", list(STUDY))
def test_torch_reference_matches_spec_parameter_totals(name):
    net = tr.build(name)
    assert port.count_params(net) == port.SPEC_PARAMS[name]
    variables = jax.eval_shape(lambda: init_variables(get_model(name), key(0)))
    assert count_params(variables) == port.count_params(net)


@pytest.mark.parametrize("name", list(STUDY))
def test_eval_log_probs_agree_with_pytorch(name):
    torch.manual_seed(0)
    variables = flax_variables(name)
    images = normalised_images(4, seed=1)
    net = port.from_flax(name, variables)
    expected = flax_log_probs(name, variables, images)
    got = port.log_probs(net, images)
    assert got.shape == expected.shape == (4, 10)
    # A meaningful comparison: different images give different outputs, and
    # the outputs are proper log-probabilities.
    assert np.ptp(expected, axis=0).max() > 1e-3
    np.testing.assert_allclose(np.exp(expected).sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", BN_MODELS)
def test_running_statistics_are_ported(name):
    """The ported running statistics are the ones eval uses: resetting them
    in PyTorch changes the output, and by more than the tolerance."""
    variables = flax_variables(name)
    images = normalised_images(4, seed=2)
    net = port.from_flax(name, variables)
    ported = port.log_probs(net, images)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
    assert np.abs(port.log_probs(net, images) - ported).max() > 100 * ATOL


def test_train_mode_batch_norm_matches_flax():
    """Model 3 (BN, no dropout) in training mode: same outputs from batch
    statistics, same running-mean update; PyTorch's running variance uses the
    unbiased batch variance, Flax's the biased one (factor n / (n - 1))."""
    name = "model3"
    variables = flax_variables(name)
    images = normalised_images(8, seed=3)
    model = get_model(name)
    with jax.default_matmul_precision("highest"):
        out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
            variables, jnp.asarray(images))
    net = port.from_flax(name, variables).train()
    with torch.no_grad():
        got = net(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(got, np.asarray(out), atol=ATOL, rtol=0)
    spatial = {"bn1": 28 * 28, "bn2": 28 * 28, "bn3": 14 * 14, "bn4": 14 * 14, "bn5": 5 * 5}
    for layer, hw in spatial.items():
        bn = getattr(net, layer)
        new = updates["batch_stats"][layer]
        np.testing.assert_allclose(bn.running_mean.numpy(), np.asarray(new["mean"]), atol=1e-5)
        # Recover each framework's batch variance from its running update.
        old_var = variables["batch_stats"][layer]["var"]
        flax_batch_var = (np.asarray(new["var"]) - 0.9 * old_var) / 0.1
        torch_batch_var = (bn.running_var.numpy() - 0.9 * old_var) / 0.1
        n = images.shape[0] * hw
        np.testing.assert_allclose(torch_batch_var, flax_batch_var * n / (n - 1), rtol=1e-3, atol=1e-4)


def test_port_is_strict():
    """A variables dict of another model does not load silently."""
    with pytest.raises(RuntimeError):
        port.load_flax_variables(tr.build("model5"), flax_variables("model6"))
