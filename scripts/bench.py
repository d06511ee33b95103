"""Time s7jax's model6 training against the original PyTorch recipe, in one run.

The command lives in ``tools.bench.against_pytorch``, beside the library (not in the wheel);
this file runs it from a checkout. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench.against_pytorch import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
