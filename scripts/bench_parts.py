"""Where the train step and epoch spend their time, against the machine's limit.

The command lives in ``s7jax.tools.bench.parts`` (installed as ``s7jax-bench-parts``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.tools.bench.parts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
