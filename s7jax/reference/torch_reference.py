"""The six models in PyTorch, written from the study's layer tables (not from
``s7jax.models``, so that agreement means something), the original's train
step and epoch (``tests/torch_port.py`` ports Flax weights into them by layer
name). In training mode PyTorch's BN updates
``running_var`` with the unbiased variance, Flax with the biased one (under
1% apart at n >= 128). PyTorch is imported on first use."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any


BN_EPS = 1e-5
BN_MOMENTUM = 0.1  # PyTorch's convention: weight of the new batch

# The spec, model by model: a list of stages. ("conv", i, in, out, padding,
# bias, bn, relu, dropout-after-relu) and ("pool", i, dropout-after-pool).
_C, _P = "conv", "pool"


def _spec(name: str) -> list[tuple]:
    if name in ("model1", "model2", "model3", "model4", "model5"):
        # Seven convs, ReLU after 1-6, pools after 2 and 4. Models 1 and 2: no BN,
        # no dropout; 3 to 5: convs 1-5 conv-BN-ReLU; model 4 adds drop(0.3)
        # right after each pool, model 5 drop(0.2) after the ReLU of convs 1-5.
        c = {"model1": (32, 64, 128, 256, 512, 1024), "model2": (8, 16, 24, 28, 24, 16),
             "model3": (8, 16, 20, 24, 20, 16), "model4": (8, 16, 20, 16, 20, 16),
             "model5": (8, 16, 12, 16, 20, 16)}[name]
        bn, q = name not in ("model1", "model2"), 0.3 if name == "model4" else 0.0
        d = 0.2 if name == "model5" else 0.0
        return [
            (_C, 1, 1, c[0], 1, True, bn, True, d),
            (_C, 2, c[0], c[1], 1, True, bn, True, d),
            (_P, 1, q),
            (_C, 3, c[1], c[2], 1, True, bn, True, d),
            (_C, 4, c[2], c[3], 1, True, bn, True, d),
            (_P, 2, q),
            (_C, 5, c[3], c[4], 0, True, bn, True, d),
            (_C, 6, c[4], c[5], 0, True, False, True, 0.0),
            (_C, 7, c[5], 10, 0, True, False, False, 0.0),
        ]
    if name == "model6":
        # Convs 1-5 without bias, then BN-ReLU; drop(0.1) after convs 1-4;
        # conv 6 has no activation and feeds conv 7.
        return [
            (_C, 1, 1, 8, 1, False, True, True, 0.1),
            (_C, 2, 8, 12, 1, False, True, True, 0.1),
            (_P, 1, 0.0),
            (_C, 3, 12, 16, 1, False, True, True, 0.1),
            (_C, 4, 16, 10, 1, False, True, True, 0.1),
            (_P, 2, 0.0),
            (_C, 5, 10, 14, 0, False, True, True, 0.0),
            (_C, 6, 14, 10, 0, True, False, False, 0.0),
            (_C, 7, 10, 10, 0, True, False, False, 0.0),
        ]
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


MODEL_NAMES = ("model1", "model2", "model3", "model4", "model5", "model6")


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PyTorch is needed for s7jax.reference.torch_reference: pip install -e '.[bench]' "
            "(or a CPU build: pip install torch)") from e
    return torch


def build(name: str) -> Any:
    """Model ``name``: NCHW input, (B, 10) log-probabilities, PyTorch's init."""
    nn = _torch().nn
    layers: list[tuple[str, Any]] = []
    for stage in _spec(name):
        if stage[0] == _P:
            _, i, q = stage
            layers.append((f"pool{i}", nn.MaxPool2d(2, 2)))
            if q:
                layers.append((f"drop{i}", nn.Dropout(q)))
            continue
        _, i, cin, cout, padding, bias, bn, relu, q = stage
        layers.append((f"conv{i}", nn.Conv2d(cin, cout, 3, stride=1, padding=padding, bias=bias)))
        if bn:
            layers.append((f"bn{i}", nn.BatchNorm2d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)))
        if relu:
            layers.append((f"relu{i}", nn.ReLU()))
        if q:
            layers.append((f"drop{i}", nn.Dropout(q)))
    layers += [("flatten", nn.Flatten()),  # (B, 10, 1, 1) -> (B, 10)
               ("log_softmax", nn.LogSoftmax(dim=1))]
    return nn.Sequential(OrderedDict(layers))


def transform(augment=None) -> Any:
    """The original's transform of one PIL image."""
    from torchvision import transforms

    from s7jax.data import MEAN, STD

    steps = []
    if augment is not None and augment.enabled:
        steps = [transforms.RandomRotation((-augment.degrees, augment.degrees), fill=(0,)),
                 transforms.ColorJitter(brightness=augment.brightness, contrast=augment.contrast)]
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])


def sgd_step(net, optimizer, images, labels) -> tuple[Any, Any]:
    F = _torch().nn.functional
    optimizer.zero_grad()
    out = net(images)
    loss = F.nll_loss(out, labels)
    loss.backward()
    optimizer.step()
    return out, loss


def train_epoch(net, optimizer, batches, on_step=None) -> tuple[float, int, int]:
    """The original notebooks' ``train()``, the loss read back every step:
    (sum of batch loss x size, correct, images)."""
    net.train()
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels in batches:
        out, loss = sgd_step(net, optimizer, images, labels)
        loss_sum += loss.item() * len(labels)
        correct += int(out.argmax(1).eq(labels).sum())
        seen += len(labels)
        if on_step is not None:
            on_step()
    return loss_sum, correct, seen

