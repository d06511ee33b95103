"""Flax weights ported into the PyTorch networks of
``s7jax.reference.torch_reference``, by layer name (the parity tests')."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from s7jax.reference.torch_reference import _torch, build

# Trainable parameters per model, as the study states them.
SPEC_PARAMS = {"model1": 6_379_786, "model2": 21_798, "model3": 17_354, "model4": 14_450,
               "model5": 12_122, "model6": 7_664}


def count_params(net) -> int:
    """Trainable parameters (BN running statistics excluded)."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


def load_flax_variables(net, variables: Mapping[str, Any]):
    """Copy Flax variables into ``net`` (from :func:`build`), strictly: a
    missing or extra layer, or a shape mismatch, raises. Returns ``net``."""
    torch = _torch()
    params, stats = variables["params"], variables.get("batch_stats", {}) or {}
    state: OrderedDict[str, Any] = OrderedDict()

    def tensor(x):  # a writable copy: arrays loaded from a weights file are read-only
        return torch.from_numpy(np.array(x, dtype=np.float32, order="C"))

    for layer, p in params.items():
        if layer.startswith("conv"):
            state[f"{layer}.weight"] = tensor(np.transpose(p["kernel"], (3, 2, 0, 1)))
            if "bias" in p:
                state[f"{layer}.bias"] = tensor(p["bias"])
        elif layer.startswith("bn"):
            if layer not in stats:
                raise KeyError(f"batch_stats has no entry for {layer}")
            state[f"{layer}.weight"] = tensor(p["scale"])
            state[f"{layer}.bias"] = tensor(p["bias"])
            state[f"{layer}.running_mean"] = tensor(stats[layer]["mean"])
            state[f"{layer}.running_var"] = tensor(stats[layer]["var"])
            state[f"{layer}.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
        else:
            raise KeyError(f"unexpected Flax layer {layer!r} (expected conv<i> or bn<i>)")
    net.load_state_dict(state, strict=True)
    return net


def from_flax(name: str, variables: Mapping[str, Any]):
    return load_flax_variables(build(name), variables).eval()


def log_probs(net, images_nhwc: np.ndarray) -> np.ndarray:
    """Eval-mode log-probabilities of NHWC float images, as numpy."""
    torch = _torch()
    x = np.ascontiguousarray(np.asarray(images_nhwc, np.float32).transpose(0, 3, 1, 2))
    x = torch.from_numpy(x).to(next(net.parameters()).device)
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            return net(x).cpu().numpy()
    finally:
        net.train(was_training)
