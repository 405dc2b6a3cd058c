"""Residual Attention Network models, weights, training and evaluation for ranlens."""

from .network import AttentionOutput, Intermediates, ResidualAttentionNet, count_parameters, describe
from .registry import ARCHITECTURES, get_model, list_models
from .preprocess import Preprocess
from .weights import Weights, WeightsError, get_weights, list_weights

__all__ = [
    "ARCHITECTURES",
    "AttentionOutput",
    "Intermediates",
    "Preprocess",
    "ResidualAttentionNet",
    "Weights",
    "WeightsError",
    "count_parameters",
    "describe",
    "get_model",
    "get_weights",
    "list_models",
    "list_weights",
]
