"""The second-generation mobile blocks: squeeze-and-excitation and the inverted residual.

An inverted residual (MobileNetV2, Sandler et al. 2018, Figure 3 and Table 1) is a 1x1
expansion in front of a depthwise-separable conv whose pointwise conv is linear (no
activation), with a residual connection between the thin ends when the shape allows. MnasNet
(Tan et al. 2019), EfficientNet's MBConv (Tan & Le 2019) and MobileNetV3 (Howard et al. 2019)
add squeeze-and-excitation (Hu et al. 2018) after the depthwise conv and stochastic depth
(Huang et al. 2016) on the residual branch. MobileNetV4's universal inverted bottleneck (Qin et
al. 2024) generalises the inverted residual with optional depthwise convs before the expansion
and after the projection; EfficientNetV2's fused form (Tan & Le 2021) merges expansion and
depthwise conv into one full conv.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from .layers import ActLike, ConvNormAct, IntPair, NormLike, add_shortcut, create_act, create_drop_path, pair

__all__ = ["FusedInvertedResidual", "InvertedResidual", "LayerScale2d", "ResidualConv", "SEFactory", "SqueezeExcite",
           "UniversalInvertedResidual"]


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


class LayerScale2d(nn.Module):
    """A learned per-channel scale of a residual branch (Touvron et al. 2021, CaiT, section 3;
    MobileNetV4's hybrids): ``x * gamma``, ``gamma`` starting at ``init_value``."""

    def __init__(self, channels: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((channels,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma.view(1, -1, 1, 1)


class UniversalInvertedResidual(nn.Module):
    """MobileNetV4's Universal Inverted Bottleneck (Qin et al. 2024, section 3.2, Figure 4):
    [depthwise ``start_kernel`` -> norm] -> 1x1 expand -> norm -> act -> [depthwise ``kernel`` ->
    norm -> act] -> [squeeze-excite] -> linear 1x1 project -> norm -> [depthwise ``end_kernel`` ->
    norm] -> [layer scale], plus the input when stride is 1 and the channels match (``skip``),
    through stochastic depth (``drop_path``). A kernel of 0 leaves that depthwise conv out.

    Its forms: the inverted bottleneck (middle only: MobileNetV2's block, ``InvertedResidual``),
    ConvNeXt-like (start only), ExtraDW (start and middle) and FFN (none). The stride is taken by
    the middle depthwise conv, else by the first one there is. ``depthwise=False`` makes those convs standard ones (the
    "Conv MobileNet" comparison of MobileNets, Table 4). A list of kernel sizes makes a depthwise
    conv MixConv's (Tan & Le 2019: its channels in groups, one kernel size each), and
    ``expand_groups`` / ``project_groups`` above 1 split the 1x1 convs likewise (MixNet).
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        *,
        start_kernel: IntPair = 0,
        kernel_size: IntPair = 3,
        end_kernel: IntPair = 0,
        stride: IntPair = 1,
        dilation: IntPair = 1,
        padding: Union[str, int] = "same",
        norm: NormLike = "batchnorm",
        act: ActLike = "relu6",
        se: Optional[SEFactory] = None,
        skip: bool = True,
        layer_scale: Optional[float] = None,
        drop_path: float = 0.0,
        depthwise: bool = True,
        expand_groups: int = 1,
        project_groups: int = 1,
    ) -> None:
        super().__init__()
        self.stride = pair(stride, "stride")
        # a list of kernel sizes: MixConv's mixed depthwise conv (MixNet)
        kernels = [k if isinstance(k, list) else pair(k, "kernel_size") if k else None
                   for k in (start_kernel, kernel_size, end_kernel)]
        # the stride goes to the middle depthwise conv, else the first one there is (the reference code's rule)
        strided = next((i for i in (1, 0, 2) if kernels[i] is not None), None)
        if strided is None and self.stride != (1, 1):
            raise ValueError(f"a stride of {stride} needs a depthwise conv: start_kernel, kernel_size or end_kernel")

        def dw(channels: int, i: int, with_act: bool) -> nn.Module:
            if kernels[i] is None:
                return nn.Identity()
            return ConvNormAct(channels, channels, kernels[i], stride=self.stride if i == strided else 1,
                               dilation=dilation, groups=channels if depthwise else 1, padding=padding, norm=norm,
                               act=act if with_act else None)

        self.dw_start = dw(in_chs, 0, False)
        # MixNet's grouped 1x1 convs: one 1x1 kernel per channel group
        self.expand = ConvNormAct(in_chs, mid_chs, [1] * expand_groups if expand_groups > 1 else 1, padding=0,
                                  norm=norm, act=act)
        self.dw = dw(mid_chs, 1, True)
        self.se = se(mid_chs, act) if se is not None else nn.Identity()
        self.project = ConvNormAct(mid_chs, out_chs, [1] * project_groups if project_groups > 1 else 1, padding=0,
                                   norm=norm, act=None)
        self.dw_end = dw(out_chs, 2, False)
        self.layer_scale = LayerScale2d(out_chs, layer_scale) if layer_scale is not None else nn.Identity()
        self.has_skip = skip and in_chs == out_chs and self.stride == (1, 1)
        self.drop_path = create_drop_path(drop_path if self.has_skip else 0.0)
        self.in_chs, self.out_chs, self.mid_chs = in_chs, out_chs, mid_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dw(self.expand(self.dw_start(x)))
        out = self.layer_scale(self.dw_end(self.project(self.se(out))))
        return add_shortcut(self.drop_path(out), x) if self.has_skip else out


class InvertedResidual(UniversalInvertedResidual):
    """MobileNetV2's inverted residual (MBConv): 1x1 expand -> norm -> act -> depthwise k x k ->
    norm -> act -> [squeeze-excite] -> linear 1x1 project -> norm, plus the input when stride
    is 1 and the channels match (``skip``), through stochastic depth (``drop_path``): the
    universal inverted bottleneck with its middle depthwise conv only, and the same modules.

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
        depthwise: bool = True,
        expand_groups: int = 1,
        project_groups: int = 1,
    ) -> None:
        super().__init__(in_chs, out_chs, mid_chs, kernel_size=kernel_size, stride=stride, dilation=dilation,
                         padding=padding, norm=norm, act=act, se=se, skip=skip, drop_path=drop_path,
                         depthwise=depthwise, expand_groups=expand_groups, project_groups=project_groups)


class FusedInvertedResidual(nn.Module):
    """The fused inverted residual (Fused-MBConv: EfficientNetV2, Tan & Le 2021, Figure 2;
    MobileNetV4's FusedIB, Qin et al. 2024): a full k x k conv that expands -> norm -> act ->
    [squeeze-excite] -> linear 1x1 project -> norm, plus the input when stride is 1 and the
    channels match. On accelerators one dense conv beats the expand + depthwise pair early in
    the network, where maps are large and channels few."""

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
        self.expand = ConvNormAct(in_chs, mid_chs, kernel_size, stride=stride, dilation=dilation, padding=padding,
                                  norm=norm, act=act)
        self.se = se(mid_chs, act) if se is not None else nn.Identity()
        self.project = ConvNormAct(mid_chs, out_chs, 1, padding=0, norm=norm, act=None)
        self.stride = pair(stride, "stride")
        self.has_skip = skip and in_chs == out_chs and self.stride == (1, 1)
        self.drop_path = create_drop_path(drop_path if self.has_skip else 0.0)
        self.in_chs, self.out_chs, self.mid_chs = in_chs, out_chs, mid_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.expand(x)))
        return add_shortcut(self.drop_path(out), x) if self.has_skip else out


class ResidualConv(ConvNormAct):
    """conv -> norm -> act plus the input when stride is 1 and the channels match (EfficientNetV2's
    first stage, Fused-MBConv with expansion 1: a single k x k conv), through stochastic depth."""

    def __init__(self, in_chs: int, out_chs: int, kernel_size: IntPair = 3, *, drop_path: float = 0.0,
                 **kwargs: Any) -> None:
        super().__init__(in_chs, out_chs, kernel_size, **kwargs)
        self.has_skip = in_chs == out_chs and self.stride == (1, 1)
        self.drop_path = create_drop_path(drop_path if self.has_skip else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_norm_act(x)
        return add_shortcut(self.drop_path(out), x) if self.has_skip else out
