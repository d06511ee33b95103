"""The models: the study's six and model7 beyond it (``study``), the layers
written for XLA:CPU (``ops``), and their tables (``summary``;
``python -m s7jax.models``)."""

from s7jax.models.study import (BEYOND, INPUT_SHAPE, MODELS, STUDY, TinyNet, count_params,
                                get_model, init_variables)

__all__ = ["BEYOND", "INPUT_SHAPE", "MODELS", "STUDY", "TinyNet", "count_params", "get_model",
           "init_variables"]
