"""Make TensorFlow and TensorFlow Datasets unimportable, as on the GPU machine
or a Colab TPU runtime, in every Python process that has this folder on its
``PYTHONPATH`` (Python imports ``sitecustomize`` at start-up).

``tests/conftest.py`` puts it there when ``S7JAX_BLOCK_TENSORFLOW=1``, so
that the scripts the tests start are blocked too; ``scripts/gpu_check.py
--dry-run`` does the same for each of its steps.
"""

import sys

# A None entry makes `import tensorflow` raise ImportError, and
# importlib.util.find_spec("tensorflow") return None, exactly as if it were
# not installed.
for name in ("tensorflow", "tensorflow_datasets"):
    sys.modules[name] = None
