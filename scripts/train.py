"""Train one of the six models on MNIST and evaluate it after every epoch.

The command lives in ``s7jax.cli.train`` (installed as ``s7jax-train``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
