"""Reusable depthwise-separable building blocks, from MobileNetV1 to MobileNetV4 (no YAML, no
model registry here)."""
from .layers import (
    ACTIVATIONS,
    NORMS,
    CepstralMeanNorm,
    Conv2dSame,
    LayerNorm2d,
    MaxPool,
    MixedConv2d,
    PooledLinear,
    ConvNormAct,
    DepthwiseConv,
    PointwiseConv,
    add_shortcut,
    create_act,
    create_conv2d,
    create_norm,
    calls_unwatched,
    inert,
    run_sequence,
    unhooked,
    pair,
)
from .attention import MobileMultiQueryAttention, MultiQueryAttention2d
from .mobile import (FusedInvertedResidual, InvertedResidual, LayerScale2d, ResidualConv, SqueezeExcite,
                     UniversalInvertedResidual)
from .convnext import ConvNeXtBlock
from .ghost import GhostBottleneck, GhostModule
from .reparam import MobileOneBlock, RepConv
from .repvit import NormLinearClassifier, RepViTBlock, RepVggDepthwise
from .shuffle import ShuffleUnit, channel_shuffle
from .separable import DepthwiseSeparableConv, SeparableConv2d, XceptionBlock, standard_conv

__all__ = [
    "ACTIVATIONS",
    "calls_unwatched",
    "inert",
    "run_sequence",
    "unhooked",
    "CepstralMeanNorm",
    "NORMS",
    "Conv2dSame",
    "PooledLinear",
    "ConvNeXtBlock",
    "ConvNormAct",
    "DepthwiseConv",
    "DepthwiseSeparableConv",
    "FusedInvertedResidual",
    "GhostBottleneck",
    "GhostModule",
    "InvertedResidual",
    "LayerNorm2d",
    "LayerScale2d",
    "MaxPool",
    "MixedConv2d",
    "MobileMultiQueryAttention",
    "MobileOneBlock",
    "MultiQueryAttention2d",
    "NormLinearClassifier",
    "ResidualConv",
    "PointwiseConv",
    "RepConv",
    "RepViTBlock",
    "RepVggDepthwise",
    "SeparableConv2d",
    "ShuffleUnit",
    "SqueezeExcite",
    "UniversalInvertedResidual",
    "XceptionBlock",
    "add_shortcut",
    "create_act",
    "create_conv2d",
    "create_norm",
    "channel_shuffle",
    "pair",
    "standard_conv",
]
