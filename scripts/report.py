"""Regenerate the README's Results and Performance sections from results/.

The command lives in ``s7jax.tools.report.readme`` (installed as ``s7jax-report``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.tools.report.readme import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
