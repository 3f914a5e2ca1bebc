"""Structural reparameterisation (RepVGG, Ding et al. 2021, section 3.3; MobileOne, Vasu et al.
2023, "MobileOne: An Improved One millisecond Mobile Backbone", section 3.1 and Figure 3).

While training, a conv has several parallel branches: ``branches`` k x k convs each with its
BatchNorm (MobileOne's over-parameterisation), a 1x1 conv with its BatchNorm (the "scale"
branch) and, where the shape is kept, a BatchNorm of the input itself. Every branch is linear
at inference, so their sum is one k x k conv with a bias: each BatchNorm folds into its conv
(the arithmetic of BatchNorm folding), the 1x1 kernel is zero-padded to k x k, the identity is
the kernel with a 1 at the centre of each channel's own filter. ``reparameterize()`` replaces
the branches by that conv; the outputs stay within float rounding.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import (ActLike, ConvNormAct, IntPair, NormLike, create_act, create_conv2d, create_drop_path, create_norm,
                     inert, pair)
from .mobile import SEFactory

__all__ = ["MobileOneBlock", "RepConv", "check_foldable", "fold_batchnorm_into_kernel"]


def check_foldable(norm: nn.Module) -> None:
    """Raise ``ValueError`` for a norm that cannot fold into a conv: only a BatchNorm (its running
    statistics fixed at inference) or no norm can; a LayerNorm normalises each position by its own
    channels, so the branches it follows cannot be deployed as one conv."""
    if not isinstance(norm, (nn.BatchNorm2d, nn.Identity)):
        raise ValueError(f"cannot reparameterise a branch normalised by {type(norm).__name__}: only BatchNorm (or no "
                         "norm) folds into a conv; build the model with norm: {type: batchnorm} to deploy it as one "
                         "conv, or use it as trained")


def fold_batchnorm_into_kernel(kernel: torch.Tensor, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """``norm(conv(x))`` for a conv without bias as one conv's kernel and bias: ``kernel * gamma /
    std`` and ``beta - mean * gamma / std`` (Ioffe & Szegedy 2015's inference form, in MobileOne's
    and timm's ``_fuse_bn_tensor`` order of operations, so the folded weights are theirs to the
    bit). No norm (``norm: none``) leaves the kernel, with a zero bias; a LayerNorm raises
    ``ValueError`` (``check_foldable``)."""
    check_foldable(norm)
    if not isinstance(norm, nn.BatchNorm2d):
        return kernel, torch.zeros(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    std = (norm.running_var + norm.eps).sqrt()
    return kernel * (norm.weight / std).reshape(-1, 1, 1, 1), norm.bias - norm.running_mean * norm.weight / std


class RepConv(nn.Module):
    """A reparameterisable conv (MobileOne, Vasu et al. 2023, Figure 3; RepVGG, Ding et al. 2021,
    Figure 2): the sum of ``branches`` k x k conv + norm branches, a 1x1 conv + norm branch
    (``scale_branch``, when k > 1) and a norm of the input itself (when stride 1 and the channels
    match; ``identity=False``: none), through stochastic depth on the conv branches, then
    [squeeze-excite] and act. The branches are summed in MobileOne's order (scale, k x k, identity),
    or with ``identity_after_scale`` in GhostNetV3's (scale, identity, k x k; Liu et al. 2024), so
    that timm's weights give its outputs to the bit.

    ``reparameterize()`` folds every branch into one k x k conv with a bias (``reparam_conv``);
    ``inference=True`` builds that form directly (to load its weights). ``groups``: 1 for a full
    conv, ``in_chs`` for a depthwise one.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: IntPair = 3,
        *,
        stride: IntPair = 1,
        groups: int = 1,
        branches: int = 1,
        scale_branch: bool = True,
        identity: bool = True,
        identity_after_scale: bool = False,
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
        se: Optional[SEFactory] = None,
        drop_path: float = 0.0,
        inference: bool = False,
    ) -> None:
        super().__init__()
        if branches < 1:
            raise ValueError(f"a reparameterisable conv needs at least one k x k branch, got branches={branches}")
        if identity_after_scale and drop_path > 0:
            raise ValueError("identity_after_scale adds the identity before the k x k branches, so no stochastic "
                             f"depth can drop those alone: use drop_path=0, got {drop_path}")
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.stride = pair(stride, "stride")
        self.in_chs, self.out_chs, self.groups = in_chs, out_chs, groups
        self.has_identity = identity and in_chs == out_chs and self.stride == (1, 1)
        self.identity_after_scale = identity_after_scale
        self.has_scale = scale_branch and self.kernel_size != (1, 1)
        # timm's order of registration (identity, conv_kxk, conv_scale): its weights map by name
        self.identity: nn.Module = create_norm(norm, out_chs) if self.has_identity else nn.Identity()
        self.conv_kxk = nn.ModuleList(
            [ConvNormAct(in_chs, out_chs, self.kernel_size, stride=self.stride, groups=groups, norm=norm, act=None)
             for _ in range(branches)])
        # a 1x1 conv of stride s is a 1x1 conv of the input subsampled by s (the same numbers): PyTorch
        # 2.14's oneDNN weight gradient of a strided 1x1 conv on a channels-last input of few channels
        # (MobileOne's stem: 3) corrupts the heap, so the stride is taken by the slice in forward
        self.conv_scale: nn.Module = ConvNormAct(in_chs, out_chs, 1, groups=groups, padding=0, norm=norm,
                                                 act=None) if self.has_scale else nn.Identity()
        self.reparam_conv: nn.Module = nn.Identity()
        self.reparameterized = False
        self.drop_path = create_drop_path(drop_path if self.has_identity else 0.0)
        self.se = se(out_chs, act) if se is not None else nn.Identity()
        self.act = create_act(act)
        if inference:  # the padding rule of the k x k branches (an even kernel pads as TensorFlow does)
            self._replace_branches(create_conv2d(in_chs, out_chs, self.kernel_size, stride=self.stride, groups=groups,
                                                 bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparameterized:
            out = self.reparam_conv(x)
            if torch.jit.is_scripting():
                out = self.se(out)
            elif not inert(self.se):  # an identity's call is pure Python overhead
                out = self.se(out)
            return self.act(out)
        out = x
        first = True
        if self.has_scale:  # the sum in MobileOne's (and timm's) order: scale, then each k x k branch
            out, first = self.conv_scale(x[:, :, ::self.stride[0], ::self.stride[1]]), False
        early_identity = self.has_identity and self.identity_after_scale
        if early_identity:
            y = self.identity(x)
            out, first = (y if first else out + y), False
        for conv in self.conv_kxk:
            y = conv(x)
            out, first = (y if first else out + y), False
        out = self.drop_path(out)
        if self.has_identity and not early_identity:
            out = out + self.identity(x)
        return self.act(self.se(out))

    @torch.no_grad()
    def fused_kernel_and_bias(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The kernel and bias of the one conv that computes what the branches sum to: the k x k
        branches' sum, plus the scale branch's padded to k x k, plus the identity's (in that
        order, MobileOne's)."""
        kh, kw = self.kernel_size
        conv_k = torch.zeros_like(self.conv_kxk[0].conv.weight)
        conv_b = torch.zeros(self.out_chs, dtype=conv_k.dtype, device=conv_k.device)
        for branch in self.conv_kxk:
            k, b = fold_batchnorm_into_kernel(branch.conv.weight, branch.norm)
            conv_k, conv_b = conv_k + k, conv_b + b
        if self.has_scale:
            k, b = fold_batchnorm_into_kernel(self.conv_scale.conv.weight, self.conv_scale.norm)
            top, left = (kh - 1) // 2, (kw - 1) // 2
            conv_k, conv_b = conv_k + nn.functional.pad(k, [left, kw - 1 - left, top, kh - 1 - top]), conv_b + b
        if self.has_identity:
            ident = torch.zeros_like(conv_k)
            per_group = self.in_chs // self.groups
            channels = torch.arange(self.out_chs)
            ident[channels, channels % per_group, (kh - 1) // 2, (kw - 1) // 2] = 1
            k, b = fold_batchnorm_into_kernel(ident, self.identity)
            conv_k, conv_b = conv_k + k, conv_b + b
        return conv_k, conv_b

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Replace the branches by one conv with a bias computing their sum (in place; once)."""
        if self.reparameterized:
            return
        kernel, bias = self.fused_kernel_and_bias()
        first = self.conv_kxk[0].conv  # its class and padding: a Conv2dSame stays one
        conv = type(first)(self.in_chs, self.out_chs, self.kernel_size, self.stride, first.padding,
                           dilation=first.dilation, groups=self.groups, bias=True).to(kernel)
        conv.weight.copy_(kernel)
        conv.bias.copy_(bias)
        self._replace_branches(conv)

    def _replace_branches(self, conv: nn.Conv2d) -> None:
        self.reparam_conv = conv
        self.conv_kxk = nn.ModuleList()
        self.conv_scale = nn.Identity()
        self.identity = nn.Identity()
        self.drop_path = nn.Identity()
        self.has_scale = self.has_identity = False
        self.reparameterized = True


class MobileOneBlock(nn.Module):
    """MobileOne's block (Vasu et al. 2023, Figure 3): a depthwise k x k ``RepConv`` (``branches``
    k x k branches, a 1x1 scale branch, an identity norm where the shape is kept) then a
    pointwise ``RepConv`` (``branches`` 1x1 branches, an identity norm), each followed by its
    [squeeze-excite] and act: at inference a depthwise-separable conv with biases."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: IntPair = 3,
        *,
        stride: IntPair = 1,
        branches: int = 1,
        scale_branch: bool = True,
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
        se: Optional[SEFactory] = None,
        drop_path: float = 0.0,
        depthwise: bool = True,
        inference: bool = False,
    ) -> None:
        super().__init__()
        self.dw = RepConv(in_chs, in_chs, kernel_size, stride=stride, groups=in_chs if depthwise else 1,
                          branches=branches, scale_branch=scale_branch, norm=norm, act=act, se=se, drop_path=drop_path,
                          inference=inference)
        self.pw = RepConv(in_chs, out_chs, 1, branches=branches, norm=norm, act=act, se=se, drop_path=drop_path,
                          inference=inference)
        self.in_chs, self.out_chs, self.stride = in_chs, out_chs, self.dw.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(x))
