"""s7jax: six MNIST CNNs, from 6.4M parameters to 7,664, in pure-functional JAX/Flax,
and model7 beyond them, under 4,000.

The packages, in the order the data flows through a run:

* ``config``     every setting of a run and each model's default recipe
* ``data``       MNIST, its pipelines (TFDS/tf.data, on the device), augmentation
* ``models``     the Flax Linen models and the layers written for XLA:CPU
* ``training``   the pure, jit-compiled steps, the epoch loops, a run, many seeds
* ``runs``       what a run writes: metrics, checkpoints, weights, events, plots
* ``reference``  the PyTorch build of the models and the referee
* ``cli``        the commands (``s7jax-train`` and the rest)
"""

__version__ = "0.1.0"
