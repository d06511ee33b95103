"""Time s7jax's model6 training against the original PyTorch recipe, in one run.

The command lives in ``s7jax.tools.bench.against_pytorch`` (installed as ``s7jax-bench``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.tools.bench.against_pytorch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
