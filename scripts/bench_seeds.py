"""What training N seeds as one vectorised program costs, against N runs.

The command lives in ``s7jax.tools.bench.seeds`` (installed as ``s7jax-bench-seeds``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.tools.bench.seeds import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
