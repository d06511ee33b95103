"""s7jax: six MNIST CNNs, from 6.4M parameters to 7,664, in pure-functional JAX/Flax.

The pieces, each in its own module:

* ``s7jax.models``   the six Flax Linen models and the parameter count
* ``s7jax.data``     MNIST: the official files, TFDS (offline), host and on-device pipelines
* ``s7jax.augment``  rotation and brightness/contrast, in TensorFlow and in JAX
* ``s7jax.train``    pure jit-compiled train/eval steps and the epoch loop
* ``s7jax.config``   every setting of a run and each model's default recipe
"""

__version__ = "0.1.0"
