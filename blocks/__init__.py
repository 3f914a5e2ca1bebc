"""Reusable depthwise-separable building blocks (no YAML, no model registry here)."""
from .layers import (
    ACTIVATIONS,
    NORMS,
    Conv2dSame,
    ConvNormAct,
    DepthwiseConv,
    PointwiseConv,
    create_act,
    create_conv2d,
    create_norm,
    pair,
)
from .separable import DepthwiseSeparableConv, SeparableConv2d, XceptionBlock, standard_conv

__all__ = [
    "ACTIVATIONS",
    "NORMS",
    "Conv2dSame",
    "ConvNormAct",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "PointwiseConv",
    "SeparableConv2d",
    "XceptionBlock",
    "create_act",
    "create_conv2d",
    "create_norm",
    "pair",
    "standard_conv",
]
