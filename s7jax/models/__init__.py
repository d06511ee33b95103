"""The models: the study's six (``study``), the layers written for XLA:CPU
(``ops``), and their tables (``summary``; ``python -m s7jax.models``)."""

from s7jax.models.study import (BN_EPSILON, BN_MOMENTUM, INPUT_SHAPE, MODELS, Model1, Model2, Model3,
                                Model4, Model5, Model6, count_params, get_model, init_variables)

__all__ = ["BN_EPSILON", "BN_MOMENTUM", "INPUT_SHAPE", "MODELS", "Model1", "Model2", "Model3",
           "Model4", "Model5", "Model6", "count_params", "get_model", "init_variables"]
