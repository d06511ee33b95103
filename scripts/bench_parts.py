"""Where the train step and epoch spend their time, against the machine's limit.

The command lives in ``tools.bench.parts``, beside the library (not in the wheel);
this file runs it from a checkout. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench.parts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
