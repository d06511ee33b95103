"""What the persistent compilation cache saves a second identical run.

The command lives in ``tools.bench.startup``, a tool of the repository
(no installed command: it runs the checkout's scripts); this file runs it.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench.startup import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
