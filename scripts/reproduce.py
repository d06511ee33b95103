"""Re-run a recorded run from its config.json and check that it repeats.

The command lives in ``s7jax.cli.reproduce`` (installed as ``s7jax-reproduce``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.cli.reproduce import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
