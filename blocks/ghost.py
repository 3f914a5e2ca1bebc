"""GhostNet's blocks (Han et al. 2020, "GhostNet: More Features from Cheap Operations", CVPR,
section 3.1, Figure 2 and Figure 3), and RepGhostNet's (Chen et al. 2022, "RepGhost: A
Hardware-Efficient Ghost Module via Re-parameterization", section 3, Figure 2).

A ghost module makes half of its output features with an ordinary 1x1 conv and the other half
from those with a cheap depthwise conv ("ghost" features: many feature maps of a trained network
are near-copies of others), concatenated. The ghost bottleneck is MobileNetV2's inverted residual
with both 1x1 convs replaced by ghost modules.
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import nn

from .layers import ActLike, ConvNormAct, IntPair, NormLike, add_shortcut, pair
from .mobile import SEFactory
from .reparam import RepConv

__all__ = ["GhostBottleneck", "GhostModule"]


class GhostModule(nn.Module):
    """``ceil(out / 2)`` features from a 1x1 conv -> norm -> act (``primary``), as many again from
    them by a depthwise ``dw_kernel`` conv -> norm -> act (``cheap``), concatenated and cut to
    ``out_chs`` (GhostNet, section 3.1, ratio s = 2).

    ``attention``: GhostNetV2's decoupled fully connected attention (Tang et al. 2022, section 4.1,
    Figure 4): on the input average-pooled by 2, a 1x1 conv -> norm, a depthwise 1x5 and a 5x1
    conv -> norm (``short``: long-range mixing along rows, then columns), a sigmoid, upsampled
    (nearest) to scale the ghost features.

    ``rep``: RepGhost's module instead: ``out`` features from the 1x1 conv -> norm -> act, and the
    ghost features *added* to them rather than concatenated, as a reparameterisable depthwise
    conv (``RepConv``: the conv -> norm beside a norm of its input, then act), which folds into one
    depthwise conv with a bias (``reparameterized``).

    ``rep_branches``: GhostNetV3's module (Liu et al. 2024, "GhostNetV3: Exploring the Training
    Strategies for Compact Models", arXiv:2404.11202): concatenated as GhostNet's, but its
    1x1 conv is ``rep_branches`` 1x1 conv + norm branches, and its cheap depthwise conv as many
    k x k branches beside a 1x1 depthwise one and a norm of its input; each ``RepConv`` folds
    into one conv with a bias."""

    def __init__(self, in_chs: int, out_chs: int, *, dw_kernel: IntPair = 3, norm: NormLike = "batchnorm",
                 act: ActLike = "relu", depthwise: bool = True, attention: bool = False, rep: bool = False,
                 rep_branches: int = 0, reparameterized: bool = False) -> None:
        super().__init__()
        if rep and rep_branches:
            raise ValueError("rep (RepGhost's added ghost features) and rep_branches (GhostNetV3's concatenated "
                             "ones) are two kinds of ghost module: choose one")
        init = out_chs if rep else math.ceil(out_chs / 2)
        groups = init if depthwise else 1
        if rep_branches:
            self.primary: nn.Module = RepConv(in_chs, init, 1, branches=rep_branches, identity=False, norm=norm,
                                              act=act, inference=reparameterized)
            self.cheap: nn.Module = RepConv(init, init, dw_kernel, groups=groups, branches=rep_branches,
                                            identity_after_scale=True, norm=norm, act=act, inference=reparameterized)
        else:
            self.primary = ConvNormAct(in_chs, init, 1, padding=0, norm=norm, act=act)
            self.cheap = RepConv(init, init, dw_kernel, groups=groups, scale_branch=False, norm=norm, act=act,
                                 inference=reparameterized) if rep else \
                ConvNormAct(init, init, dw_kernel, groups=groups, norm=norm, act=act)
        self.rep, self.rep_branches = rep, rep_branches
        groups = out_chs if depthwise else 1
        self.short: nn.Module = nn.Sequential(
            ConvNormAct(in_chs, out_chs, 1, padding=0, norm=norm, act=None),
            ConvNormAct(out_chs, out_chs, (1, 5), groups=groups, norm=norm, act=None),
            ConvNormAct(out_chs, out_chs, (5, 1), groups=groups, norm=norm, act=None),
        ) if attention else nn.Identity()
        self.attention = attention
        self.in_chs, self.out_chs = in_chs, out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary(x)
        if self.rep:
            return self.cheap(primary)
        out = torch.cat((primary, self.cheap(primary)), dim=1).narrow(1, 0, self.out_chs)
        if self.attention:
            gate = torch.sigmoid(self.short(nn.functional.avg_pool2d(x, kernel_size=2, stride=2)))
            out = out * nn.functional.interpolate(gate, size=(out.shape[-2], out.shape[-1]), mode="nearest")
        return out


class GhostBottleneck(nn.Module):
    """GhostNet's bottleneck (Figure 3): ghost module expanding to ``mid_chs`` (with act; with
    ``attention`` GhostNetV2's DFC attention on it) ->
    [depthwise ``kernel_size`` conv -> norm, where stride > 1] -> [squeeze-excite] -> ghost module
    projecting to ``out_chs`` (no act), plus the input, or where the shape changes a depthwise
    conv -> norm -> 1x1 conv -> norm of it (``shortcut``). ``rep``: RepGhostNet's bottleneck, the
    same with RepGhost modules (``GhostModule``'s ``rep``). ``rep_branches``: GhostNetV3's, with
    its ghost modules and the strided depthwise conv a ``RepConv`` of that many k x k branches and
    a 1x1 one."""

    def __init__(
        self,
        in_chs: int,
        mid_chs: int,
        out_chs: int,
        *,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        padding: Union[str, int] = "same",
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
        se: Optional[SEFactory] = None,
        depthwise: bool = True,
        attention: bool = False,
        rep: bool = False,
        rep_branches: int = 0,
        reparameterized: bool = False,
    ) -> None:
        super().__init__()
        self.stride = pair(stride, "stride")
        self.rep, self.rep_branches = rep, rep_branches
        self.ghost1 = GhostModule(in_chs, mid_chs, norm=norm, act=act, depthwise=depthwise, attention=attention,
                                  rep=rep, rep_branches=rep_branches, reparameterized=reparameterized)
        dw_groups = mid_chs if depthwise else 1
        if self.stride == (1, 1):
            self.dw: nn.Module = nn.Identity()
        elif rep_branches:
            self.dw = RepConv(mid_chs, mid_chs, kernel_size, stride=self.stride, groups=dw_groups,
                              branches=rep_branches, norm=norm, act=None, inference=reparameterized)
        else:
            self.dw = ConvNormAct(mid_chs, mid_chs, kernel_size, stride=self.stride, padding=padding, groups=dw_groups,
                                  norm=norm, act=None)
        self.se = se(mid_chs, act) if se is not None else nn.Identity()
        self.ghost2 = GhostModule(mid_chs, out_chs, norm=norm, act=None, depthwise=depthwise, rep=rep,
                                  rep_branches=rep_branches, reparameterized=reparameterized)
        self.shortcut: nn.Module = nn.Identity() if in_chs == out_chs and self.stride == (1, 1) else nn.Sequential(
            ConvNormAct(in_chs, in_chs, kernel_size, stride=self.stride, padding=padding,
                        groups=in_chs if depthwise else 1, norm=norm, act=None),
            ConvNormAct(in_chs, out_chs, 1, padding=0, norm=norm, act=None))
        self.in_chs, self.mid_chs, self.out_chs = in_chs, mid_chs, out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return add_shortcut(self.ghost2(self.se(self.dw(self.ghost1(x)))), self.shortcut(x))
