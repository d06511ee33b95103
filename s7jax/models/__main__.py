"""``python -m s7jax.models``: the models' table."""

from s7jax.models.summary import models_table

print(models_table())
