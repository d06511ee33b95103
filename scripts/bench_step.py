"""What each speed choice in model6's training step is worth, in one run.

The command lives in ``s7jax.tools.bench.step`` (installed as ``s7jax-bench-step``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.tools.bench.step import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
