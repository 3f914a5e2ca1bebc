"""Depthwise-separable blocks: MobileNet's ``DepthwiseSeparableConv``, Xception's
``SeparableConv2d`` and the Xception residual unit ``XceptionBlock``.

A depthwise-separable conv factorises a ``K x K`` conv of ``C -> O`` channels into a depthwise
``K x K`` conv and a pointwise 1x1 conv: ``C*K^2*m + C*m*O`` weights and ``H*W*C*(K^2 + O)``
multiply-adds instead of ``C*K^2*O`` and ``H*W*C*K^2*O``, a ratio of ``1/O + 1/K^2``
(MobileNets, Howard et al. 2017, eq. 5). The stride is applied once, by the depthwise conv.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from .mobile import SEFactory
from .layers import (ActLike, ConvNormAct, DepthwiseConv, IntPair, NormLike, PointwiseConv, add_shortcut, create_act,
                     create_conv2d, create_drop_path, create_norm, pair)

__all__ = ["DepthwiseSeparableConv", "SeparableConv2d", "XceptionBlock", "SepConvFactory"]

SepConvFactory = Callable[[int, int, IntPair, IntPair], nn.Module]
"""``(in_chs, out_chs, kernel_size, stride) -> module``: how an ``XceptionBlock`` makes its convs."""


class DepthwiseSeparableConv(nn.Module):
    """MobileNet-style depthwise-separable conv: dw -> norm -> act -> pw -> norm -> act.

    (Howard et al. 2017, Figure 3.) With ``mid_norm_act=False`` nothing sits between the
    depthwise and the pointwise conv, which gives Xception's "SeparableConv, BN, ReLU". The
    second generation's first stage (MobileNetV2's ``t = 1`` row, EfficientNet's MBConv1,
    MobileNetV3) puts a squeeze-excite (``se``) between them, leaves the pointwise conv linear
    (``pw_act=False``) and adds the input when the shape allows (``skip``), through stochastic
    depth (``drop_path``).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        dilation: IntPair = 1,
        depth_multiplier: int = 1,
        bias: bool = False,
        padding: Union[str, int] = "same",
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
        mid_norm_act: bool = True,
        se: Optional[SEFactory] = None,
        pw_act: bool = True,
        skip: bool = False,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.dw = DepthwiseConv(
            in_chs, depth_multiplier=depth_multiplier, kernel_size=kernel_size, stride=stride,
            dilation=dilation, bias=bias, padding=padding,
            norm=norm if mid_norm_act else None, act=act if mid_norm_act else None,
        )
        self.se = se(self.dw.out_chs, act) if se is not None else nn.Identity()
        self.pw = PointwiseConv(self.dw.out_chs, out_chs, bias=bias, norm=norm, act=act if pw_act else None)
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.stride = pair(stride, "stride")
        self.has_skip = skip and in_chs == out_chs and self.stride == (1, 1)
        self.drop_path = create_drop_path(drop_path if self.has_skip else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pw(self.se(self.dw(x)))
        return add_shortcut(self.drop_path(out), x) if self.has_skip else out


class SeparableConv2d(nn.Module):
    """Xception-style separable conv: depthwise then pointwise, with nothing in between.

    (Chollet 2017, section 4.7: an activation between the two hurts.)
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        dilation: IntPair = 1,
        depth_multiplier: int = 1,
        bias: bool = False,
        padding: Union[str, int] = "same",
    ) -> None:
        super().__init__()
        self.dw = DepthwiseConv(
            in_chs, depth_multiplier=depth_multiplier, kernel_size=kernel_size, stride=stride,
            dilation=dilation, bias=bias, padding=padding,
        )
        self.pw = PointwiseConv(self.dw.out_chs, out_chs, bias=bias)
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.stride = pair(stride, "stride")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))


def _separable(in_chs: int, out_chs: int, kernel_size: IntPair, stride: IntPair) -> nn.Module:
    return SeparableConv2d(in_chs, out_chs, kernel_size=kernel_size, stride=stride)


class XceptionBlock(nn.Module):
    """The Xception residual unit (Chollet 2017, Figure 5; Keras and timm ``legacy_xception``).

    ``body``: ``num_convs`` x [act, separable conv, norm] (the first act dropped when
    ``start_with_act`` is false), then ``MaxPool2d(3, stride, padding=1)`` if ``stride > 1``.
    ``shortcut``: a 1x1 strided conv + norm when the shape changes, else identity; it takes the
    block input before the first activation. ``grow_first`` changes channels in the first conv
    (entry flow) instead of the last (exit flow).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        stride: int = 1,
        num_convs: int = 2,
        kernel_size: IntPair = 3,
        start_with_act: bool = True,
        grow_first: bool = True,
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
        sep_conv: SepConvFactory = _separable,
    ) -> None:
        super().__init__()
        if num_convs < 1:
            raise ValueError(f"num_convs must be at least 1, got {num_convs}")
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        if in_chs != out_chs or stride != 1:
            self.shortcut: nn.Module = ConvNormAct(in_chs, out_chs, 1, stride=stride, padding=0, norm=norm, act=None)
        else:
            self.shortcut = nn.Identity()
        layers: list[nn.Module] = []
        for i in range(num_convs):
            if grow_first:
                conv_in, conv_out = (in_chs if i == 0 else out_chs), out_chs
            else:
                conv_in, conv_out = in_chs, (in_chs if i < num_convs - 1 else out_chs)
            if i > 0 or start_with_act:
                # The first act must not run in place: the shortcut still needs the raw input.
                layers.append(create_act(act) if i > 0 else _not_inplace(create_act(act)))
            layers.append(sep_conv(conv_in, conv_out, kernel_size, 1))
            layers.append(create_norm(norm, conv_out))
        if stride != 1:
            layers.append(nn.MaxPool2d(3, stride, padding=1))
        self.body = nn.Sequential(*layers)
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_shortcut(self.body(x), self.shortcut(x))


def _not_inplace(act: nn.Module) -> nn.Module:
    if hasattr(act, "inplace"):
        act.inplace = False
    return act


def standard_conv(in_chs: int, out_chs: int, kernel_size: IntPair, stride: IntPair) -> nn.Module:
    """The standard conv a separable conv replaces (same channels, kernel, stride; no norm)."""
    return create_conv2d(in_chs, out_chs, kernel_size, stride=stride)
