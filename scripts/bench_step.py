"""What each speed choice in model6's training step is worth, in one run.

The command lives in ``tools.bench.step``, beside the library (not in the wheel);
this file runs it from a checkout. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench.step import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
