"""How fast each fault that needs no data is refused, and in how many lines.

The command lives in ``tools.bench.refusals``, a tool of the repository
(no installed command: it runs the checkout's scripts); this file runs it.
``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.bench.refusals import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
