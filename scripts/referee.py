"""Train a model the way the original study did, in PyTorch, as a referee for s7jax's run of the same model (see ``s7jax.reference.referee``).

The command lives in ``s7jax.cli.referee`` (installed as ``s7jax-referee``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.cli.referee import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
