"""Training batches made on the accelerator, one jitted call per batch or
inside a compiled epoch, the same batches either way."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from s7jax.data.augment import AugmentConfig, augment_jax
from s7jax.data.files import Split
from s7jax.data.host import MEAN, STD, steps_per_epoch
from s7jax.models.seedwise import seedwise

@struct.dataclass
class DeviceTrainData:
    """The training split on the accelerator(s), batched and augmented there.
    A pytree, so the arrays enter jitted functions as arguments, never as
    constants. Each batch is a pure function of (seed, step) (other random
    streams than tf.data's)."""

    images: jax.Array  # uint8 (N, 28, 28, 1)
    labels: jax.Array  # int32 (N,)
    shuffle_key: jax.Array
    augment_key: jax.Array
    batch_size: int = struct.field(pytree_node=False)
    epochs: int = struct.field(pytree_node=False)
    first_clean_step: int = struct.field(pytree_node=False)
    augment: AugmentConfig = struct.field(pytree_node=False)

    @classmethod
    def create(cls, split: Split, *, batch_size: int, seed: int, augment: AugmentConfig,
               epochs: int, clean_epochs: int = 0, replicated=None) -> "DeviceTrainData":
        steps = steps_per_epoch(len(split), batch_size)
        shuffle_key, augment_key = cls.keys_for(seed)
        return cls(images=jax.device_put(split.images, replicated),
                   labels=jax.device_put(split.labels, replicated),
                   shuffle_key=shuffle_key, augment_key=augment_key, batch_size=batch_size,
                   epochs=epochs, first_clean_step=(epochs - clean_epochs) * steps,
                   augment=augment)

    @staticmethod
    def keys_for(seed: int) -> tuple[jax.Array, jax.Array]:
        return tuple(jax.random.split(jax.random.key(seed, impl="rbg")))

    def for_seeds(self, seeds) -> tuple["DeviceTrainData", "DeviceTrainData"]:
        """This data with each seed's keys stacked, and its ``jax.vmap`` in_axes."""
        keys = [self.keys_for(s) for s in seeds]
        stacked = dataclasses.replace(self, shuffle_key=jnp.stack([k for k, _ in keys]),
                                      augment_key=jnp.stack([k for _, k in keys]))
        axes = dataclasses.replace(self, images=None, labels=None, shuffle_key=0, augment_key=0)
        return stacked, axes

    @property
    def steps(self) -> int:
        """Batches per epoch, the remainder dropped."""
        return self.images.shape[0] // self.batch_size

    def order(self, epoch) -> jax.Array:
        n = self.images.shape[0]
        return seedwise(lambda key, epoch: jax.random.permutation(jax.random.fold_in(key, epoch), n))(
            self.shuffle_key, epoch)

    def batch(self, order: jax.Array, step) -> dict[str, jax.Array]:
        """Global step ``step``'s batch, given its epoch's ``order``."""
        i = step % self.steps
        idx = jax.lax.dynamic_slice_in_dim(order, i * self.batch_size, self.batch_size)
        batch = self.images[idx].astype(jnp.float32) / 255.0
        if self.augment.enabled:
            key = jax.random.fold_in(self.augment_key, step)
            batch = jax.lax.cond(step < self.first_clean_step,
                                 lambda b: augment_jax(b, key, self.augment), lambda b: b, batch)
        return {"image": (batch - MEAN) / STD, "label": self.labels[idx]}

    def batches(self, start_step: int = 0, sharding=None) -> Iterator[dict[str, jax.Array]]:
        """Batches from global step ``start_step`` on, one jitted call each."""
        permutation = jax.jit(DeviceTrainData.order)
        make = jax.jit(DeviceTrainData.batch, out_shardings=sharding)
        order = None
        for step in range(start_step, self.epochs * self.steps):
            if order is None or step % self.steps == 0:
                order = permutation(self, step // self.steps)
            yield make(self, order, step)

    def scan(self, fn: Callable[[Any, dict[str, jax.Array]], tuple[Any, Any]], carry: Any,
             epoch, first: int = 0) -> tuple[Any, Any]:
        """``lax.scan`` of ``fn(carry, batch)`` over steps ``first ..`` of
        ``epoch``: the batches :meth:`batches` yields, in the calling program."""
        order = self.order(epoch)
        steps = jnp.arange(first, self.steps) + epoch * self.steps
        return jax.lax.scan(lambda c, step: fn(c, self.batch(order, step)), carry, steps)
