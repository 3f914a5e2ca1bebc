"""Reusable depthwise-separable building blocks, first and second generation (no YAML, no model
registry here)."""
from .layers import (
    ACTIVATIONS,
    NORMS,
    CepstralMeanNorm,
    Conv2dSame,
    PooledLinear,
    ConvNormAct,
    DepthwiseConv,
    PointwiseConv,
    create_act,
    create_conv2d,
    create_norm,
    pair,
)
from .mobile import InvertedResidual, SqueezeExcite
from .separable import DepthwiseSeparableConv, SeparableConv2d, XceptionBlock, standard_conv

__all__ = [
    "ACTIVATIONS",
    "CepstralMeanNorm",
    "NORMS",
    "Conv2dSame",
    "PooledLinear",
    "ConvNormAct",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "InvertedResidual",
    "PointwiseConv",
    "SeparableConv2d",
    "SqueezeExcite",
    "XceptionBlock",
    "create_act",
    "create_conv2d",
    "create_norm",
    "pair",
    "standard_conv",
]
