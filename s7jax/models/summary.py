"""Tables of the models: the study's and model7 in one (``python -m s7jax.models``,
``--designs`` for model7's trial designs too), and one model layer by layer
(output shape, parameters, receptive field)."""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp

from s7jax.models.study import INPUT_SHAPE, MODELS, STUDY, count_params, init_variables

# Layer names in s7jax.models are <kind><index>: conv1, bn1, drop1, pool1, ...
KINDS = {"bn": "BatchNorm", "drop": "Dropout", "pool": "MaxPool 2x2",
         "gap": "GlobalAvgPool", "pointwise": "Conv 1x1", "head": "Conv 1x1"}


def layer_rows(model: nn.Module, variables) -> list[tuple[str, str, tuple[int, ...], int, int]]:
    """``(name, kind, output shape, parameters, receptive field)`` per layer;
    ``jump`` is the input-pixel distance between neighbouring outputs."""
    _, state = model.apply(variables, jnp.zeros((1, *INPUT_SHAPE)), train=False,
                           capture_intermediates=True, mutable=["intermediates"])
    rf, jump, rows, size = 1, 1, [], INPUT_SHAPE[0]
    for name, value in state["intermediates"].items():
        if name == "__call__":
            continue
        kind = re.match(r"[a-z]+", name).group()
        params = variables["params"].get(name, {})
        if kind in ("conv", "depthwise"):
            k = params["kernel"].shape[0]
            rf += (k - 1) * jump
        elif kind == "pool":
            rf += (2 - 1) * jump
            jump *= 2
        elif kind == "gap":  # every position of the map before it
            rf += (size - 1) * jump
        n_params = sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
        shape = tuple(value["__call__"][0].shape[1:])
        size = shape[0] if len(shape) == 3 else size
        label = (f"Conv {k}x{k}" if kind == "conv" else f"Depthwise {k}x{k}" if kind == "depthwise"
                 else KINDS[kind])
        rows.append((name, label, shape, n_params, rf))
    return rows


def layer_table(model: nn.Module, variables) -> str:
    rows = layer_rows(model, variables)
    w = max(7, *(len(row[0]) + 1 for row in rows))
    lines = [f"{'layer':<{w}}{'type':<14}{'output':>14}{'params':>9}{'RF':>5}"]
    lines += [f"{n:<{w}}{k:<14}{str(s):>14}{p:>9,}{rf:>5}" for n, k, s, p, rf in rows]
    lines.append(f"{'total':<{w}}{'':<14}{'':>14}{count_params(variables):>9,}")
    return "\n".join(lines)


def models_table(designs: bool = False) -> str:
    """The study's models and model7; with ``designs`` the trial designs too (model7-a ..)."""
    rows = [("model", "parameters", "batch_stats entries", "output shape", "from")]
    for name in MODELS if designs else [*STUDY, "model7"]:
        model = MODELS[name]()
        # eval_shape: the table needs shapes, not 6.4M random numbers.
        variables = jax.eval_shape(lambda m=model: init_variables(m, jax.random.key(0)))
        out = jax.eval_shape(
            lambda v, m=model: m.apply(v, jnp.zeros((2, *INPUT_SHAPE)), train=False), variables
        )
        stats = sum(int(v.size) for v in jax.tree_util.tree_leaves(variables.get("batch_stats", {})))
        rows.append((name, f"{count_params(variables):,}", f"{stats:,}", str(tuple(out.shape)),
                     "the study" if name in STUDY else "beyond the study"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
