"""Many seeds in one process, three ways (``STRATEGIES``): the epoch program of
``--pipeline scan`` (``loops.EpochPerCall``) over a leading seed axis of the
state, the keys and the BN calibration images, each made as the seed's own
run makes it, either vmapped (one batched program; random draws stay the
seed's own: ``s7jax.models.seedwise``) or mapped (``lax.map``: the seeds one
after another inside the program); or ``sequential``, each seed's own run in
turn (``sweep.py``), sharing the loaded data and the compiled programs.
Seed ``s`` trains what its own run trains (vmapped: up to float rounding),
into its own folder."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from s7jax import data
from s7jax.config import Config
from s7jax.errors import ConfigError
from s7jax.models import INPUT_SHAPE, count_params, get_model, init_variables
from s7jax.training.train import train_runs

# Only a share of the memory JAX may use goes to the seeds' copies: XLA needs
# room for its temporaries.
MEMORY_SHARE = 0.5
AGAIN = "run the same sweep again: it resumes each seed's folder"
STRATEGIES = ("vmap", "map", "sequential")


def default_strategy(backend: str) -> str:
    """On a CPU, a vmapped convolution over per-seed weights becomes a grouped
    one, several times the work (``results/seeds-cpu.json``), and a map gains
    nothing over runs in turn; an accelerator fills its cores with the batch."""
    return "sequential" if backend == "cpu" else "vmap"


def bytes_per_seed(config: Config, model: nn.Module) -> int:
    """A generous estimate of what one more seed costs in device memory:
    its state (parameters, gradients, momentum: 4 copies in float32), and the
    activations of one training batch kept for the backward pass (every
    layer's output, 3 float32 copies: value, mask, gradient)."""
    variables = init_variables(model, jax.random.key(0, impl="rbg"))
    _, state = model.apply(variables, jnp.zeros((1, *INPUT_SHAPE)), train=False,
                           capture_intermediates=True, mutable=["intermediates"])
    per_image = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["intermediates"]))
    return 16 * count_params(variables) + 12 * per_image * config.batch_size


def memory_limit() -> int:
    """Bytes JAX may use on the first device (its limit; a CPU's physical memory)."""
    stats = jax.devices()[0].memory_stats() or {}
    if stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(config: Config, model: nn.Module, n: int) -> None:
    per_seed, limit = bytes_per_seed(config, model), memory_limit()
    need = n * per_seed
    if need > MEMORY_SHARE * limit:
        fits = max(int(MEMORY_SHARE * limit // per_seed), 0)
        raise ConfigError(
            f"{n} seeds of {config.model} together need about {need / 2**30:.1f} GiB, more than "
            f"{MEMORY_SHARE:.0%} of the {limit / 2**30:.1f} GiB this device offers; train at most "
            f"{fits} together, or one after another (--strategy sequential)")


def as_together(config: Config) -> Config:
    """``config`` as seeds trained together run it: one program per epoch
    (``--pipeline scan``, so one step per call whatever ``--steps-per-call``)."""
    return dataclasses.replace(config, pipeline="scan", steps_per_call=1)


def train_seeds(config: Config, seeds: Sequence[int], workdirs: Sequence[str | Path], *,
                strategy: str = "vmap", **kwargs) -> dict[int, list[dict[str, Any]]]:
    """Train seed ``seeds[i]`` into ``workdirs[i]``, all as one program
    (``strategy`` vmap or map), from their checkpoints (all of one step) with
    ``resume``; each seed's rows. Checkpoints every ``checkpoint_every`` epochs,
    the last and on Ctrl-C (on an accelerator, writing them can take longer
    than training). Keywords: ``train.train_runs``'s."""
    configs = [dataclasses.replace(as_together(config), seed=s) for s in seeds]
    data.check_files(config.data_source, kwargs.get("data_dir"), kwargs.get("manual_dir"))
    check_memory(config, get_model(config.model), len(seeds))  # before a folder is touched
    histories = train_runs(configs, workdirs, strategy=strategy, how=AGAIN, **kwargs)
    return dict(zip(seeds, histories))
