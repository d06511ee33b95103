"""Trained weights as small portable files (``results/<model>/seed-<s>/weights.msgpack``):
``flax.serialization``'s msgpack of a dict with ``format``, ``model``,
``epoch``, ``test_acc``, ``arrays_sha256`` and float32 ``params`` and
``batch_stats`` keyed by layer name. :func:`load` refuses arrays that do not
match the checksum (a file without one has names and shapes checked only)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import optax
from flax import serialization

from s7jax.runs import runfiles
from s7jax.runs.checksum import arrays_match, arrays_sha256
from s7jax.runs.results import run_dir
from s7jax.errors import CheckpointError, ConfigError, RunError
from s7jax.models import MODELS, get_model, init_variables
from s7jax.training.steps import TrainState

FORMAT = "s7jax-weights-1"


def save(path: str | os.PathLike, model: str, variables: dict[str, Any], **info: Any) -> Path:
    """Write ``model``'s ``params`` and ``batch_stats``, ``info`` beside them."""
    get_model(model)  # a known model, or ConfigError
    arrays = jax.tree_util.tree_map(np.asarray, _plain(
        {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}))
    tree = {"format": FORMAT, "model": model, **info, "arrays_sha256": arrays_sha256(arrays),
            **arrays}
    path = Path(path)
    with runfiles.written_whole(path) as tmp:
        tmp.write_bytes(serialization.msgpack_serialize(tree))
    return path


def verified(path: Path) -> bool:
    """Whether ``path`` holds weights that load and match their checksum."""
    try:
        return bool(load(path))
    except RunError:
        return False


def load(path: str | os.PathLike) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(model name, {"params", "batch_stats"}, info)`` from a weights file."""
    path = Path(path)
    try:
        tree = serialization.msgpack_restore(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"no weights file {path}") from None
    except Exception as e:  # noqa: BLE001 - msgpack raises several types on damage
        raise CheckpointError(f"{path} is not a readable weights file ({type(e).__name__})") from None
    if not isinstance(tree, dict) or tree.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an s7jax weights file (format {FORMAT})")
    name = tree.get("model")
    if name not in MODELS:
        raise CheckpointError(f"{path} holds an unknown model {name!r}")
    model = get_model(name)
    expected = jax.eval_shape(lambda: init_variables(model, jax.random.key(0)))
    variables = {"params": tree.get("params"), "batch_stats": tree.get("batch_stats", {})}
    expected = {"params": expected["params"], "batch_stats": expected.get("batch_stats", {})}
    wanted = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), expected)
    try:
        shapes = jax.tree_util.tree_map(lambda x: (tuple(x.shape), str(x.dtype)), variables)
    except AttributeError:  # a leaf that is no array (or no params at all)
        shapes = None
    if shapes != wanted:
        raise CheckpointError(f"{path}: its arrays do not fit {name}'s parameters and "
                              "BatchNorm statistics")
    saved_sum = tree.get("arrays_sha256")
    if saved_sum is not None and not arrays_match(variables, saved_sum):
        raise CheckpointError(f"{path} is damaged: its arrays do not match the checksum saved "
                              "with them")
    info = {k: v for k, v in tree.items() if k not in ("params", "batch_stats")}
    return name, variables, info


def _plain(tree) -> dict:
    """Plain nested dicts: the checksum is of the tree :func:`load` gets back."""
    return {k: _plain(v) if hasattr(v, "items") else v for k, v in tree.items()}


def load_trained(model: str, seed: int = 0, results_dir: str | os.PathLike = "results"):
    """``(flax module, variables)`` of a committed run's final weights."""
    path = runfiles.weights_path(run_dir(results_dir, model, seed))
    name, variables, _ = load(path)
    if name != model:
        raise CheckpointError(f"{path} holds {name}, not {model}")
    return get_model(name), variables


def export_state(workdir: str | os.PathLike, config, state, history: list[dict[str, Any]]) -> Path:
    """Write the weights a finished run evaluates (its moving average, if
    kept) to ``weights.msgpack``, from this process's replica."""
    def local(x):
        return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x

    last = history[-1]
    return save(runfiles.weights_path(workdir), config.model,
                jax.tree.map(local, {"params": state.eval_params(),
                                     "batch_stats": state.batch_stats}),
                epoch=int(last["epoch"]), step=int(local(state.step)),
                test_acc=float(last["test_acc"]), seed=int(config.seed))


def as_state(model, variables: dict[str, Any]):
    """A TrainState holding ``variables``, for ``eval_step``."""
    return TrainState.create(apply_fn=model.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=optax.identity())
