"""The PyTorch side of ``scripts/bench.py``: the original recipe, one function per measurement.

model6 from ``s7jax.reference.torch_reference``, trained as the referee trains it
(``torch_reference.transform``, ``sgd_step`` and ``train_epoch``: the
study's recipe, ``default_config("model6", "original")``) through a
DataLoader with ``torch_workers`` workers, as the original notebooks did.
Runs in a process of its own (:mod:`tools.bench.against_pytorch`
starts it), on the uint8 arrays the parent exported, so that it never
imports TensorFlow and its peak memory is its own.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from tools.bench.measure import clock, epoch_summary, log, maxrss, timed


def _dataset(images: Any, labels: Any, transform: Callable) -> Any:
    """MNIST from uint8 arrays as torchvision's MNIST serves it: a PIL 'L'
    image through ``transform``, and an int label."""
    from PIL import Image
    from torch.utils.data import Dataset

    class ArrayMNIST(Dataset):
        def __len__(self) -> int:
            return len(labels)

        def __getitem__(self, i: int) -> tuple[Any, int]:
            return transform(Image.fromarray(images[i])), int(labels[i])

    return ArrayMNIST()


def _sgd(net: Any) -> Any:
    """The original recipe's optimiser for ``net``."""
    import torch

    from s7jax.config import default_config

    recipe = default_config("model6", "original")
    return torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum)


def loaders(spec: dict[str, Any], use_cuda: bool) -> tuple[Any, Any]:
    """The training loader (shuffled, augmented) and the test loader, over
    the exported arrays."""
    import numpy as np
    from torch.utils.data import DataLoader

    from s7jax.reference import torch_reference
    from s7jax.config import default_config

    arrays = np.load(spec["arrays"])
    augment = default_config("model6", "original").augment
    train = _dataset(arrays["train_images"][..., 0], arrays["train_labels"],
                     torch_reference.transform(augment))
    test = _dataset(arrays["test_images"][..., 0], arrays["test_labels"],
                    torch_reference.transform())
    args = dict(batch_size=spec["batch_size"], num_workers=spec["torch_workers"],
                pin_memory=use_cuda)
    return (DataLoader(train, shuffle=True, **args),
            DataLoader(test, shuffle=False,
                       **{**args, "batch_size": spec["torch_eval_batch_size"]}))


def step_rate(spec: dict[str, Any], model: Any, images: Any, labels: Any,
              sync: Callable) -> dict[str, Any]:
    """``sgd_step`` on a fixed batch: the first step alone (``torch.compile``
    compiles there), ``warmup`` more untimed, then ``steps`` back to back."""
    from s7jax.reference import torch_reference

    optimizer = _sgd(model)
    model.train()
    sync()
    t = timed(lambda: torch_reference.sgd_step(model, optimizer, images, labels),
              calls=spec["steps"], warmup=spec["warmup"], sync=sync)
    return {"first_step_s": t.first_s, "steps": spec["steps"], "seconds": t.seconds[0],
            "images_per_s": spec["steps"] * spec["batch_size"] / t.seconds[0]}


def tuned_step_rates(spec: dict[str, Any], device: Any, images: Any, labels: Any,
                     sync: Callable) -> dict[str, Any]:
    """The step as a speed-minded user would run it: channels-last memory,
    ``torch.compile`` (inductor), both. A variant that fails (no C++
    compiler for inductor, and kin) records its error."""
    import torch

    from s7jax.reference import torch_reference

    def build(**to: Any) -> Any:
        return torch_reference.build("model6").to(device, **to)

    cl = torch.channels_last
    variants = {
        "channels_last": lambda: (build(memory_format=cl), images.contiguous(memory_format=cl)),
        "compile": lambda: (torch.compile(build()), images),
        "compile_channels_last": lambda: (torch.compile(build(memory_format=cl)),
                                          images.contiguous(memory_format=cl)),
    }
    out = {}
    for name, make in variants.items():
        try:
            out[name] = r = step_rate(spec, *make(), labels, sync)
            log(f"pytorch: step rate, {name}: {r['images_per_s']:,.0f} img/s "
                f"(first step {r['first_step_s']:.1f} s)")
        except Exception as e:  # noqa: BLE001
            out[name] = {"error": f"{type(e).__name__}: {str(e)[:200]}"}
            log(f"pytorch: {name} failed: {type(e).__name__}")
    return out


def epochs(spec: dict[str, Any], loader: Any, device: Any, sync: Callable) -> tuple[Any, dict]:
    """Full epochs from a fresh model, as the original notebooks' ``train()``:
    the loader's workers start with every epoch, and the loss and accuracy
    are read back every step. Returns the trained model and the figures."""
    import torch

    from s7jax.reference import torch_reference

    torch.manual_seed(0)
    model = torch_reference.build("model6").to(device)
    optimizer = _sgd(model)
    per_epoch = []
    for epoch in range(spec["epochs_measured"]):
        sync()
        batches = ((x.to(device), y.to(device)) for x, y in loader)
        seconds, (loss_sum, correct, seen) = clock(
            lambda: torch_reference.train_epoch(model, optimizer, batches), sync)
        per_epoch.append(seconds)
        log(f"pytorch: epoch {epoch + 1}: {per_epoch[-1]:.2f} s "
            f"(train loss {loss_sum / seen:.4f}, acc {100 * correct / seen:.2f}%)")
    return model, epoch_summary(per_epoch, len(loader.dataset), steps=len(loader))


def evaluation(spec: dict[str, Any], model: Any, loader: Any, device: Any,
               sync: Callable) -> dict[str, Any]:
    """The test set through the test loader, as the original ``test()``."""
    import torch
    import torch.nn.functional as F

    def test() -> tuple[float, int]:
        loss, correct = 0.0, 0
        with torch.no_grad():
            for images, labels in loader:
                images, labels = images.to(device), labels.to(device)
                output = model(images)
                loss += F.nll_loss(output, labels, reduction="sum").item()
                correct += output.argmax(dim=1).eq(labels).sum().item()
        return loss, correct

    model.eval()
    sync()
    seconds, (loss, correct) = clock(test, sync)
    n = len(loader.dataset)
    log(f"pytorch: evaluation of {n:,} images {seconds:.3f} s (acc {100 * correct / n:.2f}%)")
    return {"seconds": seconds, "images": n, "images_per_s": n / seconds,
            "batch_size": spec["torch_eval_batch_size"], "test_loss": loss / n,
            "test_acc": 100.0 * correct / n}


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Every measurement in turn."""
    t0 = time.perf_counter()
    import torch
    import torchvision  # noqa: F401  (the imports of the original, timed)

    import s7jax.data  # noqa: F401  (MNIST's mean and standard deviation)
    from s7jax.reference import torch_reference

    out: dict[str, Any] = {"import_s": time.perf_counter() - t0}
    # The cores this process may use, not the machine's: more threads than cores slow it.
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    torch.manual_seed(0)
    use_cuda = torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")

    def sync(result: Any = None) -> Any:  # CUDA runs asynchronously
        if use_cuda:
            torch.cuda.synchronize()
        return result

    t = time.perf_counter()
    train_loader, test_loader = loaders(spec, use_cuda)
    out["load_data_s"] = time.perf_counter() - t

    # Step rate on a fixed batch (the loader's first), as the original runs
    # it (eager, NCHW), and tuned.
    images, labels = (x.to(device) for x in next(iter(train_loader)))
    eager = step_rate(spec, torch_reference.build("model6").to(device), images, labels, sync)
    out["first_step_s"] = eager["first_step_s"]
    out["step"] = {"steps": eager["steps"], "seconds": eager["seconds"]}
    out["step_images_per_s"] = eager["images_per_s"]
    log(f"pytorch: step rate {out['step_images_per_s']:,.0f} img/s ({spec['steps']} steps)")
    out["step_tuned"] = (tuned_step_rates(spec, device, images, labels, sync)
                         if spec["tuned_torch"] else {})
    rates = {n: r["images_per_s"] for n, r in out["step_tuned"].items() if "images_per_s" in r}
    if rates:
        best = max(rates, key=rates.get)
        out["step_best"] = {"variant": best, "images_per_s": rates[best]}

    model, out["epoch"] = epochs(spec, train_loader, device, sync)
    out["eval"] = evaluation(spec, model, test_loader, device, sync)
    out.update(maxrss())
    out["device"] = str(device)
    out["threads"] = torch.get_num_threads()
    if use_cuda:
        out["device_peak_bytes"] = int(torch.cuda.max_memory_allocated())
        out["device_kind"] = torch.cuda.get_device_name()
    return out
