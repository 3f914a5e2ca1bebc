"""The second-generation mobile blocks: squeeze-and-excitation and the inverted residual.

An inverted residual (MobileNetV2, Sandler et al. 2018, Figure 3 and Table 1) is a 1x1
expansion in front of a depthwise-separable conv whose pointwise conv is linear (no
activation), with a residual connection between the thin ends when the shape allows. MnasNet
(Tan et al. 2019), EfficientNet's MBConv (Tan & Le 2019) and MobileNetV3 (Howard et al. 2019)
add squeeze-and-excitation (Hu et al. 2018) after the depthwise conv and stochastic depth
(Huang et al. 2016) on the residual branch.
"""
from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from .layers import ActLike, ConvNormAct, IntPair, NormLike, create_act, create_drop_path, pair

__all__ = ["InvertedResidual", "SEFactory", "SqueezeExcite"]


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018, Figure 2): global average pool -> 1x1 conv to
    ``reduced`` channels -> act -> 1x1 conv back -> gate (sigmoid; MobileNetV3's hard
    sigmoid), which scales each input channel. Both 1x1 convs have biases."""

    def __init__(self, channels: int, reduced: int, *, act: ActLike = "relu", gate: ActLike = "sigmoid") -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = create_act(act)
        self.conv_expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = create_act(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.conv_expand(self.act(self.conv_reduce(x.mean((2, 3), keepdim=True)))))


SEFactory = Callable[[int, ActLike], nn.Module]
"""``(channels, block_act) -> module``: the squeeze-excite a block puts after its depthwise conv
(the builder decides its reduction, gate and activation from the config)."""


class InvertedResidual(nn.Module):
    """MobileNetV2's inverted residual (MBConv): 1x1 expand -> norm -> act -> depthwise k x k ->
    norm -> act -> [squeeze-excite] -> linear 1x1 project -> norm, plus the input when stride
    is 1 and the channels match (``skip``), through stochastic depth (``drop_path``).

    ``mid_chs`` is the expanded width (the caller rounds ``in_chs * expand_ratio``: ratios may be
    fractional, e.g. MobileNetV3's 4.5, 3.67 and 2.3).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        *,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        dilation: IntPair = 1,
        padding: Union[str, int] = "same",
        norm: NormLike = "batchnorm",
        act: ActLike = "relu6",
        se: Optional[SEFactory] = None,
        skip: bool = True,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        self.expand = ConvNormAct(in_chs, mid_chs, 1, padding=0, norm=norm, act=act)
        self.dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride=stride, dilation=dilation, groups=mid_chs,
                              padding=padding, norm=norm, act=act)
        self.se = se(mid_chs, act) if se is not None else nn.Identity()
        self.project = ConvNormAct(mid_chs, out_chs, 1, padding=0, norm=norm, act=None)
        self.has_skip = skip and in_chs == out_chs and pair(stride, "stride") == (1, 1)
        self.drop_path = create_drop_path(drop_path if self.has_skip else 0.0)
        self.in_chs, self.out_chs, self.mid_chs = in_chs, out_chs, mid_chs
        self.stride = pair(stride, "stride")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.dw(self.expand(x))))
        return self.drop_path(out) + x if self.has_skip else out
