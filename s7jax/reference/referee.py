"""The referee: the PyTorch build of a model trained with the study's own recipe.

The parity test shows that the modules compute what the PyTorch build
computes; the referee shows how training behaves, on the same MNIST files::

    python scripts/referee.py --model model2 --seed 0   # -> results/model2/torch-seed-0/

The recipe, as in the study's notebooks: PyTorch's default initialisation
after ``torch.manual_seed(seed)``; SGD 0.01, momentum 0.9; batch 128, the
last short batch kept; for models 5 and 6 torchvision's
``RandomRotation(7, fill=0)`` and ``ColorJitter(b, b)`` (b = 0.1, 0.2) per
PIL image; each epoch's order what ``DataLoader(shuffle=True, generator=g)``
draws. Repeats exactly on a CPU with the same thread count."""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from s7jax.reference import torch_reference
from s7jax.runs import recorder, runfiles, runlock
from s7jax.training import loops
from s7jax.data.augment import NO_AUGMENT, AugmentConfig
from s7jax.config import MAX_EPOCHS, default_config
from s7jax.data import MEAN, STD, read_idx
from s7jax.errors import ConfigError, NonFiniteLossError
from s7jax.models import STUDY, get_model
from s7jax.runs.results import run_dir


@dataclasses.dataclass(frozen=True)
class RefereeConfig:
    model: str
    seed: int = 0
    epochs: int = MAX_EPOCHS
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    augment: AugmentConfig = NO_AUGMENT
    train_subset: int | None = None  # the first N images only (tests)
    test_subset: int | None = None
    framework: str = "pytorch"

    @classmethod
    def original(cls, model: str, seed: int = 0, epochs: int = MAX_EPOCHS,
                 train_subset: int | None = None, test_subset: int | None = None,
                 allow_long: bool = False) -> "RefereeConfig":
        """The study's recipe for ``model``, checked like s7jax's own settings
        (``allow_long``: more than 15 epochs, as the study's own 20)."""
        get_model(model)  # a known model, or ConfigError
        if model not in STUDY:  # the PyTorch port is of the study's models
            raise ConfigError(f"the referee trains the study's models ({', '.join(STUDY)}), "
                              f"not {model}")
        s7jax_side = default_config(model, "original", seed=seed, epochs=epochs,
                                    train_subset=train_subset, test_subset=test_subset,
                                    allow_long=allow_long)
        return cls(model=model, seed=seed, epochs=epochs, batch_size=s7jax_side.batch_size,
                   lr=s7jax_side.lr, momentum=s7jax_side.momentum, augment=s7jax_side.augment,
                   train_subset=train_subset, test_subset=test_subset)


def workdir_for(results_dir: str | os.PathLike, config: RefereeConfig) -> Path:
    return run_dir(results_dir, config.model, config.seed, "referee")


def train_referee(config: RefereeConfig, workdir: str | os.PathLike, *, manual_dir=None,
                  overwrite: bool = False, show_progress: bool = True) -> list[dict[str, Any]]:
    """Train ``config`` with PyTorch into ``workdir`` (a GPU where there is one); the rows."""
    torch = torch_reference._torch()
    import torch.nn.functional as F

    splits = read_idx(manual_dir)  # checked before the folder is claimed
    train = splits["train"].subset(config.train_subset)
    test = splits["test"].subset(config.test_subset)
    # On a GPU where there is one (the GPU check trains model1 there); the
    # augmentation stays on the host, as the original DataLoader's.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with runlock.claim(workdir, overwrite=overwrite) as workdir:
        torch.manual_seed(config.seed)
        net = torch_reference.build(config.model).to(device)
        optimizer = torch.optim.SGD(net.parameters(), lr=config.lr, momentum=config.momentum)
        environment = runfiles.environment(  # an s7jax run's, with PyTorch in place of JAX
            with_jax=False, framework="pytorch", torch=torch.__version__,
            torchvision=runfiles.package_versions("torchvision")["torchvision"],
            backend="gpu" if device.type == "cuda" else "cpu",
            devices=[torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"],
            threads=torch.get_num_threads())
        runfiles.write_record(workdir, {"config": dataclasses.asdict(config),
                                        "environment": environment})

        def tensors(split):  # (N, 28, 28, 1) uint8 -> (N, 1, 28, 28) normalised, and the labels
            x = torch.from_numpy(split.images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
            return (((x - MEAN) / STD).to(device),
                    torch.from_numpy(split.labels.astype(np.int64)).to(device))

        (train_x, train_y), (test_x, test_y) = tensors(train), tensors(test)
        pil = augment = None
        if config.augment.enabled:  # torchvision is needed for augmented models only
            from PIL import Image

            augment = torch_reference.transform(config.augment)
            pil = [Image.fromarray(im[..., 0]) for im in train.images]

        generator = torch.Generator().manual_seed(config.seed)
        steps = -(-len(train) // config.batch_size)

        def batches(order):
            # Made as they are consumed: augmentation and dropout draw from
            # torch's global generator in the order of the original loop.
            for i in range(steps):
                idx = order[i * config.batch_size:(i + 1) * config.batch_size]
                x = (torch.stack([augment(pil[j]) for j in idx.tolist()]).to(device) if pil
                     else train_x[idx.to(device)])
                yield x, train_y[idx.to(device)]

        def run_epoch(state, epoch, first, partial, bar):
            order = torch.randperm(len(train), generator=generator)
            loss_sum, correct, _ = torch_reference.train_epoch(net, optimizer, batches(order),
                                                               bar.update)
            net.eval()
            with torch.no_grad():
                out = torch.cat([net(test_x[i:i + 1000]) for i in range(0, len(test), 1000)])
                test_loss = F.nll_loss(out, test_y, reduction="sum").item() / len(test)
                test_correct = int(out.argmax(1).eq(test_y).sum())
            if not np.isfinite(loss_sum):
                raise NonFiniteLossError(epoch + 1, (epoch + 1) * steps)
            return None, [((loss_sum / len(train), 100.0 * correct / len(train)),
                           (test_loss, 100.0 * test_correct / len(test)))]

        history: list[dict[str, Any]] = []
        log = functools.partial(print, flush=True)
        with recorder.recording(workdir, history, log) as record:
            loops.record_epochs([record], run_epoch, None, epochs=config.epochs, steps=steps,
                                lr=lambda step: config.lr, show_progress=show_progress)
    return history
