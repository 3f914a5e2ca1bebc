"""RepViT's blocks (Wang et al. 2024, "RepViT: Revisiting Mobile CNN From ViT Perspective", CVPR,
section 3 and Figure 3): MobileNetV3's block rearranged as a ViT block, a token mixer (a
RepVGG-style depthwise conv, then squeeze-excite on every other block) and a channel mixer (a
1x1 conv MLP with a residual); between stages a separate downsampling block.

Every part is linear between its activations, so ``reparameterize()`` deploys each block as
plain convs with biases: the token mixer's three branches (depthwise k x k conv + norm, depthwise
1x1 conv, identity) become one depthwise conv, and every conv + BatchNorm pair folds, in the
order of operations of the official code and timm (``fuse``), so the deployed weights are theirs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .layers import ActLike, ConvNormAct, IntPair, NormLike, add_shortcut, create_drop_path, create_norm, pair
from .mobile import SEFactory
from .reparam import check_foldable, fold_batchnorm_into_kernel

__all__ = ["NormLinearClassifier", "RepViTBlock", "RepVggDepthwise", "fold_conv_norm"]


@torch.no_grad()
def fold_conv_norm(block: ConvNormAct) -> None:
    """``block``'s norm folded into its conv (a conv without a bias, as ``_conv_norm`` builds),
    which gains the bias (in place; ``fold_batchnorm_into_kernel``'s arithmetic, RepViT's
    ``ConvNorm.fuse``). Without a norm the bias is zero; a LayerNorm raises ``ValueError``."""
    conv = block.conv
    if conv.bias is not None and isinstance(block.norm, nn.Identity):
        return  # folded already
    kernel, bias = fold_batchnorm_into_kernel(conv.weight, block.norm)
    fused = type(conv)(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       dilation=conv.dilation, groups=conv.groups, bias=True).to(conv.weight)
    fused.weight.copy_(kernel)
    fused.bias.copy_(bias)
    block.conv, block.norm = fused, nn.Identity()


def _conv_norm(in_chs: int, out_chs: int, kernel_size: IntPair, *, stride: IntPair = 1, groups: int = 1,
               norm: NormLike, act: ActLike = None, inference: bool = False) -> ConvNormAct:
    """A conv + norm (+ act), or in the inference form the conv with a bias that it folds into."""
    return ConvNormAct(in_chs, out_chs, kernel_size, stride=stride, groups=groups, bias=inference,
                       norm=None if inference else norm, act=act)


class RepVggDepthwise(nn.Module):
    """RepViT's token mixer (section 3.1, "structural re-parameterization"): a depthwise k x k
    conv + norm, a depthwise 1x1 conv and the identity, summed. ``norm_after_sum`` (timm's RepViT
    M0.9-M2.3): the 1x1 conv has a bias and one norm follows the sum; otherwise (the first release,
    M1/M2/M3) the 1x1 conv has its own norm and none follows. ``reparameterize()`` folds all of it
    into one depthwise conv with a bias; ``inference=True`` builds that form."""

    def __init__(self, chs: int, kernel_size: IntPair = 3, *, norm: NormLike = "batchnorm", norm_after_sum: bool = True,
                 inference: bool = False) -> None:
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.norm_after_sum = norm_after_sum
        self.conv = _conv_norm(chs, chs, self.kernel_size, groups=chs, norm=norm, inference=inference)
        self.conv1 = nn.Identity()
        self.norm = nn.Identity()
        self.reparameterized = inference
        if not inference:
            self.conv1 = (nn.Conv2d(chs, chs, 1, groups=chs, bias=True) if norm_after_sum
                          else ConvNormAct(chs, chs, 1, groups=chs, padding=0, norm=norm, act=None))
            self.norm = create_norm(norm, chs) if norm_after_sum else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparameterized:
            return self.conv(x)
        return self.norm(self.conv(x) + self.conv1(x) + x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """One depthwise conv with a bias computing the three branches and the norm after them
        (RepViT's ``RepVggDw.fuse``, in its order of operations); in place, once."""
        if self.reparameterized:
            return
        check_foldable(self.norm)
        fold_conv_norm(self.conv)
        one = self.conv1
        if isinstance(one, ConvNormAct):
            fold_conv_norm(one)
            one = one.conv
        conv = self.conv.conv
        kh, kw = self.kernel_size
        top, left = (kh - 1) // 2, (kw - 1) // 2
        pad = [left, kw - 1 - left, top, kh - 1 - top]
        identity = nn.functional.pad(torch.ones_like(one.weight), pad)
        weight = conv.weight + nn.functional.pad(one.weight, pad) + identity
        bias = conv.bias + one.bias
        if isinstance(self.norm, nn.BatchNorm2d):
            bn = self.norm
            weight = weight * (bn.weight / (bn.running_var + bn.eps) ** 0.5)[:, None, None, None]
            bias = bn.bias + (bias - bn.running_mean) * bn.weight / (bn.running_var + bn.eps) ** 0.5
        conv.weight.copy_(weight)
        conv.bias.copy_(bias)
        self.conv1, self.norm = nn.Identity(), nn.Identity()
        self.reparameterized = True


class _ConvMlp(nn.Module):
    """RepViT's channel mixer: 1x1 conv + norm to ``mid_chs``, act, 1x1 conv + norm back."""

    def __init__(self, chs: int, mid_chs: int, *, norm: NormLike, act: ActLike, inference: bool) -> None:
        super().__init__()
        self.conv1 = _conv_norm(chs, mid_chs, 1, norm=norm, act=act, inference=inference)
        self.conv2 = _conv_norm(mid_chs, chs, 1, norm=norm, inference=inference)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class RepViTBlock(nn.Module):
    """RepViT's block (Figure 3). At stride 1 with the width kept: token mixer
    (``RepVggDepthwise``), [squeeze-excite], then ``x + channel mixer(x)`` (a 1x1 MLP to
    ``mlp_ratio`` x the width). Otherwise the downsampling block (section 3.3, "separate and deeper
    downsampling layers"): a stride-1 block without squeeze-excite, a depthwise k x k conv of
    ``stride`` + norm, a 1x1 conv + norm to ``out_chs``, then ``x + MLP(x)``. ``reparameterize()``
    folds every branch and norm into convs with biases.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: IntPair = 3,
        *,
        mlp_ratio: float = 2.0,
        stride: IntPair = 1,
        norm: NormLike = "batchnorm",
        act: ActLike = "gelu",
        se: Optional[SEFactory] = None,
        norm_after_sum: bool = True,
        drop_path: float = 0.0,
        depthwise: bool = True,
        inference: bool = False,
    ) -> None:
        super().__init__()
        self.stride = pair(stride, "stride")
        self.in_chs, self.out_chs = in_chs, out_chs
        self.downsample = self.stride != (1, 1) or in_chs != out_chs
        # the parts of the other form are identities (TorchScript compiles both branches of forward)
        self.pre_block = nn.Identity()
        self.spatial = nn.Identity()
        self.channel = nn.Identity()
        self.token_mixer = nn.Identity()
        self.se = nn.Identity()
        if self.downsample:
            self.pre_block = RepViTBlock(in_chs, in_chs, kernel_size, mlp_ratio=mlp_ratio, norm=norm, act=act,
                                         norm_after_sum=norm_after_sum, depthwise=depthwise, inference=inference)
            self.spatial = _conv_norm(in_chs, in_chs, kernel_size, stride=self.stride, groups=in_chs if depthwise else 1,
                                      norm=norm, inference=inference)
            self.channel = _conv_norm(in_chs, out_chs, 1, norm=norm, inference=inference)
            self.mlp = _ConvMlp(out_chs, int(out_chs * mlp_ratio), norm=norm, act=act, inference=inference)
        else:
            self.token_mixer = (RepVggDepthwise(in_chs, kernel_size, norm=norm, norm_after_sum=norm_after_sum,
                                                inference=inference) if depthwise
                                else _conv_norm(in_chs, in_chs, kernel_size, norm=norm, inference=inference))
            self.se = se(in_chs, act) if se is not None else nn.Identity()
            self.mlp = _ConvMlp(in_chs, int(in_chs * mlp_ratio), norm=norm, act=act, inference=inference)
        self.drop_path = create_drop_path(drop_path)
        self.reparameterized = inference

    def init_weights(self) -> None:
        """The MLP's last norm starts at zero scale, so the block starts as its shortcut (RepViT's
        and timm's ``bn_weight_init=0``; Goyal et al. 2017's zero-initialised residual)."""
        if isinstance(self.mlp.conv2.norm, nn.BatchNorm2d):
            nn.init.zeros_(self.mlp.conv2.norm.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.downsample:
            x = self.channel(self.spatial(self.pre_block(x)))
        else:
            x = self.se(self.token_mixer(x))
        return add_shortcut(self.drop_path(self.mlp(x)), x)

    @torch.no_grad()
    def reparameterize(self) -> None:
        """Every conv + norm of the block folded, the token mixer into one depthwise conv (in
        place, once; the pre-block of a downsampling block is reparameterised on its own)."""
        if self.reparameterized:
            return
        for module in self.modules():
            if module is not self and isinstance(module, (RepVggDepthwise, RepViTBlock)):
                module.reparameterize()
        for module in self.modules():
            if isinstance(module, ConvNormAct):
                fold_conv_norm(module)
        self.reparameterized = True


class NormLinearClassifier(nn.Module):
    """A BatchNorm of the pooled features, then a Linear (RepViT's ``NormLinear``); with
    ``distilled``, two of them whose logits are averaged (DeiT's classifier and distillation
    heads, Touvron et al. 2021, section 5: RepViT trains with a teacher's labels on the second).
    ``reparameterize()`` folds the norms and the average into one Linear (RepViT's
    ``RepVitClassifier.fuse``); ``inference=True`` builds that form."""

    def __init__(self, in_features: int, num_classes: int, *, distilled: bool = False, eps: float = 1e-5,
                 inference: bool = False) -> None:
        super().__init__()
        self.in_features, self.out_features, self.distilled = in_features, num_classes, distilled
        self.reparameterized = inference
        # timm's order of registration (the norm, then the Linear): its state dicts come back in order
        self.norm = nn.Identity() if inference else nn.BatchNorm1d(in_features, eps=eps)
        self.linear = nn.Linear(in_features, num_classes)
        self.norm_dist = nn.Identity()
        self.linear_dist = nn.Identity()
        if distilled and not inference:
            self.norm_dist, self.linear_dist = nn.BatchNorm1d(in_features, eps=eps), nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.reparameterized:
            return self.linear(x)
        if self.distilled:
            return (self.linear(self.norm(x)) + self.linear_dist(self.norm_dist(x))) / 2
        return self.linear(self.norm(x))

    @staticmethod
    def _fold(norm: nn.BatchNorm1d, linear: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
        scale = norm.weight / (norm.running_var + norm.eps) ** 0.5
        shift = norm.bias - norm.running_mean * norm.weight / (norm.running_var + norm.eps) ** 0.5
        return linear.weight * scale[None, :], (linear.weight @ shift[:, None]).view(-1) + linear.bias

    @torch.no_grad()
    def reparameterize(self) -> None:
        """One Linear computing the norm(s), the Linear(s) and their average (in place, once)."""
        if self.reparameterized:
            return
        weight, bias = self._fold(self.norm, self.linear)
        if self.distilled:
            weight_dist, bias_dist = self._fold(self.norm_dist, self.linear_dist)
            weight, bias = (weight + weight_dist) / 2, (bias + bias_dist) / 2
        self.linear.weight.copy_(weight)
        self.linear.bias.copy_(bias)
        self.norm, self.norm_dist, self.linear_dist = nn.Identity(), nn.Identity(), nn.Identity()
        self.reparameterized = True
