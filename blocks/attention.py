"""MobileNetV4's Mobile MQA block (Qin et al. 2024, section 4, "Mobile MQA"): multi-query
attention over a conv feature map, keys and values shared by every head and computed on a map
downsampled by a strided depthwise conv, so the attention costs a quarter of the full one at
``kv_stride=2``. Module names are timm's (``MobileAttention``, ``MultiQueryAttention2d``), so its
weights load by name.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .layers import IntPair, NormLike, add_shortcut, create_conv2d, create_drop_path, create_norm, pair
from .mobile import LayerScale2d

__all__ = ["MobileMultiQueryAttention", "MultiQueryAttention2d"]


class MultiQueryAttention2d(nn.Module):
    """``num_heads`` query projections (1x1 convs) and one key and one value projection, each of
    ``key_dim`` channels, over the (``kv_stride``-downsampled) map; softmax(q k^T / sqrt(d)) v per
    head, the heads concatenated and projected back by a 1x1 conv. No biases (as the paper's
    reference code)."""

    def __init__(self, dim: int, dim_out: int, *, num_heads: int = 8, key_dim: int = 64, kv_stride: int = 1,
                 dw_kernel_size: IntPair = 3, padding: Union[str, int] = "same", norm: NormLike = "batchnorm",
                 depthwise: bool = True) -> None:
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.query = nn.Sequential()
        self.query.add_module("proj", create_conv2d(dim, num_heads * key_dim, 1))
        self.key = self._kv(dim, key_dim, kv_stride, dw_kernel_size, padding, norm, depthwise)
        self.value = self._kv(dim, key_dim, kv_stride, dw_kernel_size, padding, norm, depthwise)
        self.output = nn.Sequential()
        self.output.add_module("proj", create_conv2d(num_heads * key_dim, dim_out, 1))

    @staticmethod
    def _kv(dim: int, out: int, stride: int, kernel: IntPair, padding: Union[str, int], norm: NormLike,
            depthwise: bool) -> nn.Sequential:
        seq = nn.Sequential()
        if stride > 1:
            seq.add_module("down_conv", create_conv2d(dim, dim, kernel, stride=stride, padding=padding,
                                                      groups=dim if depthwise else 1))
            seq.add_module("norm", create_norm(norm, dim))
        seq.add_module("proj", create_conv2d(dim, out, 1))
        return seq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        q = self.query(x).reshape(b, self.num_heads, self.key_dim, h * w).transpose(-1, -2).contiguous()
        k = self.key(x).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()    # (b, 1, kv pixels, key_dim)
        v = self.value(x).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        out = F.scaled_dot_product_attention(q, k, v)                           # (b, heads, pixels, key_dim)
        out = out.transpose(1, 2).reshape(b, h, w, self.num_heads * self.key_dim).permute(0, 3, 1, 2).contiguous()
        return self.output(out)


class MobileMultiQueryAttention(nn.Module):
    """norm -> ``MultiQueryAttention2d`` -> [layer scale], plus the input when the channels match
    (through stochastic depth): the attention block of MobileNetV4's hybrid models."""

    def __init__(self, in_chs: int, out_chs: int, *, num_heads: int = 8, key_dim: int = 64, kv_stride: int = 1,
                 dw_kernel_size: IntPair = 3, padding: Union[str, int] = "same", norm: NormLike = "batchnorm",
                 skip: bool = True, layer_scale: Optional[float] = None, drop_path: float = 0.0,
                 depthwise: bool = True) -> None:
        super().__init__()
        self.norm = create_norm(norm, in_chs)
        self.attn = MultiQueryAttention2d(in_chs, out_chs, num_heads=num_heads, key_dim=key_dim, kv_stride=kv_stride,
                                          dw_kernel_size=dw_kernel_size, padding=padding, norm=norm,
                                          depthwise=depthwise)
        self.layer_scale = LayerScale2d(out_chs, layer_scale) if layer_scale is not None else nn.Identity()
        self.has_skip = skip and in_chs == out_chs
        self.drop_path = create_drop_path(drop_path if self.has_skip else 0.0)
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, pair(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer_scale(self.attn(self.norm(x)))
        return add_shortcut(self.drop_path(out), x) if self.has_skip else out
