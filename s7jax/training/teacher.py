"""The teacher of knowledge distillation (Hinton, Vinyals and Dean, 2015):
a trained model whose softened predictions a small one learns from as well as
from the labels (``steps.distillation_loss``).

``Config.teacher`` names a finished run's folder (its ``weights.msgpack``,
e.g. ``results/model6/seed-0``). The teacher sees the same augmented batch as
the student, in evaluation mode, and gets no gradient."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from s7jax.models import get_model
from s7jax.runs import runfiles, weights


class Teacher:
    """A trained run as ``images -> log-probabilities``. It rides in the
    TrainState as a static field: its arrays become constants of the compiled
    step (a few thousand floats), and the checkpoints hold only the student.
    Two Teachers of the same weights are equal, so that jit's cache and the
    states of several seeds stacked into one program agree on them."""

    def __init__(self, run: str | os.PathLike):
        self.run = Path(run)
        name, self._variables, info = weights.load(runfiles.weights_path(self.run))
        self.model = name
        self._module = get_model(name)
        self._identity = (name, info.get("arrays_sha256") or str(self.run.resolve()))

    def __call__(self, images: jax.Array) -> jax.Array:
        log_probs = self._module.apply(self._variables, images, train=False)
        return jax.lax.stop_gradient(log_probs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Teacher) and self._identity == other._identity

    def __hash__(self) -> int:
        return hash(self._identity)

    def __repr__(self) -> str:
        return f"Teacher({str(self.run)!r}, {self.model})"

