"""Regenerate the README's headline blocks and the docs' generated tables from results/.

The command lives in ``tools.report.pages``, beside the library (not in the wheel);
this file runs it from a checkout. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.report.pages import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
