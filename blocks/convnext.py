"""ConvNeXt's block (Liu et al. 2022, "A ConvNet for the 2020s", CVPR, section 2 and Figure 4).

A 7x7 depthwise conv, one LayerNorm, then an inverted bottleneck MLP of two 1x1 convs (4x wider
in the middle, GELU between), a learned per-channel layer scale, stochastic depth and the
residual: a Transformer block's layout built from convolutions. Between stages a LayerNorm and
a 2x2 conv of stride 2 downsample ("separate downsampling layers", section 2.6); here they lead
the stage's first block.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import ActLike, ConvNormAct, IntPair, NormLike, add_shortcut, create_drop_path, create_norm, pair
from .mobile import LayerScale2d

__all__ = ["ConvNeXtBlock"]


class ConvNeXtBlock(nn.Module):
    """[norm -> k x k conv of stride ``stride`` to ``out_chs``, where the stride or the width
    changes (``downsample``)] -> depthwise ``kernel_size`` conv with bias -> norm -> 1x1 conv to
    ``mid_chs`` -> act -> 1x1 conv back -> [layer scale] -> stochastic depth, plus the (downsampled)
    input (ConvNeXt, Figure 4; its downsampling layer, section 2.6)."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        mid_chs: int,
        *,
        kernel_size: IntPair = 7,
        stride: IntPair = 1,
        norm: NormLike = "layernorm",
        act: ActLike = "gelu",
        layer_scale: Optional[float] = 1e-6,
        drop_path: float = 0.0,
        depthwise: bool = True,
    ) -> None:
        super().__init__()
        self.stride = pair(stride, "stride")
        self.downsample: nn.Module = nn.Identity()
        if self.stride != (1, 1) or in_chs != out_chs:
            self.downsample = nn.Sequential(create_norm(norm, in_chs),
                                            nn.Conv2d(in_chs, out_chs, self.stride, self.stride, bias=True))
        self.dw = ConvNormAct(out_chs, out_chs, kernel_size, groups=out_chs if depthwise else 1, bias=True, norm=norm,
                              act=None)
        self.expand = ConvNormAct(out_chs, mid_chs, 1, padding=0, bias=True, norm=None, act=act)
        self.project = ConvNormAct(mid_chs, out_chs, 1, padding=0, bias=True, norm=None, act=None)
        self.layer_scale = LayerScale2d(out_chs, layer_scale) if layer_scale is not None else nn.Identity()
        self.drop_path = create_drop_path(drop_path)
        self.in_chs, self.out_chs, self.mid_chs = in_chs, out_chs, mid_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        return add_shortcut(self.drop_path(self.layer_scale(self.project(self.expand(self.dw(x))))), x)
