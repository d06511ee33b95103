"""Draw training digits, each original above augmented versions of it.

The command lives in ``s7jax.cli.show_augmentations`` (installed as ``s7jax-show-augmentations``);
this file runs it from a checkout without installing. ``--help`` lists the flags.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from s7jax.cli.show_augmentations import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
