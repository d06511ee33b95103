"""The models: the study's six and model7 beyond it (``study``), the layers
written for XLA:CPU (``ops``), and their tables (``summary``;
``python -m s7jax.models``)."""

from s7jax.models.study import (BEYOND, BN_EPSILON, BN_MOMENTUM, INPUT_SHAPE, MODELS, STUDY,
                                Model1, Model2, Model3, Model4, Model5, Model6, TinyNet,
                                count_params, get_model, init_variables)

__all__ = ["BEYOND", "BN_EPSILON", "BN_MOMENTUM", "INPUT_SHAPE", "MODELS", "STUDY", "Model1",
           "Model2", "Model3", "Model4", "Model5", "Model6", "TinyNet", "count_params",
           "get_model", "init_variables"]
