"""Evaluate a saved run on the MNIST test set.

The command lives in ``s7jax.cli.evaluate`` (installed as ``s7jax-evaluate``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.cli.evaluate import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
