"""``python -m s7jax.models``: the models' table; ``--designs`` adds model7's trial designs."""

import argparse

from s7jax.models.summary import models_table

parser = argparse.ArgumentParser(prog="python -m s7jax.models",
                                 description="The models: parameters, BN state, output shape.")
parser.add_argument("--designs", action="store_true",
                    help="also the designs tried for model7 (model7-a ..), docs/results.md")
print(models_table(designs=parser.parse_args().designs))
