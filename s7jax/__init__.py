"""s7jax: six MNIST CNNs, from 6.4M parameters to 7,664, in pure-functional JAX/Flax.

The modules, in the order the data flows through a run (the README's Layout
lists every one):

* ``config``        every setting of a run and each model's default recipe
* ``data``          MNIST: the official files, TFDS (offline), the tf.data and
                    on-device pipelines; ``augment``, the augmentation they apply
* ``models``        the six Flax Linen models; ``ops``, three layers written for speed
* ``steps``         the pure, jit-compiled train and eval steps and BN re-estimation
* ``loops``         the two epoch loops; ``train`` a run, ``seeds`` many runs as one
* ``recorder``      what every run writes as an epoch ends (``runfiles``,
                    ``checkpoint``, ``events``); ``runlock`` one run per folder
* ``results``       the committed runs under ``results/``; ``referee`` the PyTorch side
* ``cli``           the commands; ``tools`` the benchmarks and the README's report,
                    which the library never imports
"""

__version__ = "0.1.0"
