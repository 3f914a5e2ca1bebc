"""ShuffleNetV2's unit (Ma et al. 2018, "ShuffleNet V2: Practical Guidelines for Efficient CNN
Architecture Design", section 4, Figure 3 (c) and (d)).

Half the channels go through a 1x1 -> depthwise 3x3 -> 1x1 branch, the other half pass
untouched (stride 1) or through their own depthwise 3x3 -> 1x1 (stride 2, where every channel
is used and the output doubles); the halves are concatenated and their channels shuffled so
that the next unit mixes them. The paper's guidelines: equal input and output widths of each
1x1 conv, no group convs, few branches, few element-wise ops.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import nn

from .layers import ActLike, ConvNormAct, IntPair, NormLike, pair, run_sequence

__all__ = ["ShuffleUnit", "channel_shuffle"]


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of ``groups`` equal groups (ShuffleNet, Zhang et al. 2018, Figure 1):
    channel ``g * n + i`` moves to ``i * groups + g``."""
    # no size but the channels' named: a graph exported with a dynamic batch keeps it dynamic
    return x.unflatten(1, (groups, x.shape[1] // groups)).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2's building block (Ma et al. 2018, Figure 3 (c) stride 1, (d) stride 2).

    Stride 1: split the channels in two, one half through ``branch`` (1x1 -> norm -> act ->
    depthwise k x k -> norm -> 1x1 -> norm -> act), the other kept, then concatenate and
    shuffle. Stride above 1: the whole input through ``branch`` and through ``shortcut``
    (depthwise k x k -> norm -> 1x1 -> norm -> act), each giving half of ``out_chs``.
    ``depthwise=False`` makes the depthwise convs standard ones.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        padding: Union[str, int] = "same",
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
        depthwise: bool = True,
    ) -> None:
        super().__init__()
        self.stride = pair(stride, "stride")
        downsample = self.stride != (1, 1)
        if out_chs % 2:
            raise ValueError(f"a shuffle unit splits its output in two halves: out_chs must be even, got {out_chs}")
        if not downsample and in_chs != out_chs:
            raise ValueError(f"a shuffle unit of stride 1 keeps its width: in_chs {in_chs} must equal out_chs "
                             f"{out_chs} (the first unit of a wider stage needs stride 2)")
        half = out_chs // 2

        def dw(channels: int) -> ConvNormAct:
            return ConvNormAct(channels, channels, kernel_size, stride=self.stride, groups=channels if depthwise else 1,
                               padding=padding, norm=norm, act=None)

        # registered before the branch: torchvision's order (branch1, branch2), so its tensors pair up in order
        self.shortcut: nn.Module = nn.Sequential(dw(in_chs), ConvNormAct(in_chs, half, 1, padding=0, norm=norm, act=act)) \
            if downsample else nn.Identity()
        self.branch = nn.Sequential(
            ConvNormAct(in_chs if downsample else half, half, 1, padding=0, norm=norm, act=act),
            dw(half),
            ConvNormAct(half, half, 1, padding=0, norm=norm, act=act),
        )
        self.downsample = downsample
        self.in_chs, self.out_chs = in_chs, out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            left, right = x, x
        else:  # two slices, not chunk(): ExecuTorch plans chunk's split outputs for the traced batch only
            half = x.shape[1] // 2
            left, right = x.narrow(1, 0, half), x.narrow(1, half, half)
        if torch.jit.is_scripting():
            if self.downsample:
                left = self.shortcut(left)
            right = self.branch(right)
        else:
            if self.downsample:
                left = run_sequence(self.shortcut, left)
            right = run_sequence(self.branch, right)
        return channel_shuffle(torch.cat((left, right), dim=1), 2)
