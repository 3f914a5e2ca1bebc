"""Closed-form shapes, parameter and MAC counts of a config, computed without building it.

The arithmetic is the papers' (MobileNets, Howard et al. 2017, section 3.1: a ``K x K`` conv
of ``M -> N`` channels on a ``D_F x D_F`` map costs ``D_K^2 * M * N * D_F^2`` MACs, its
depthwise-separable factorisation ``D_K^2 * M * D_F^2 + M * N * D_F^2``) applied layer by layer
with the padding rule of ``blocks/layers.py``. Nothing is allocated, so a plan is how a config
is checked before it is built: an input too small for the network, or a size beyond sane
limits (a typo of 1024000 channels), fails here with the key path that causes it. The
property-based tests check every plan against the built model.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from .blocks.layers import split_channels
from .config import ConfigError, ModelConfig, config_source, merge_config

__all__ = [
    "MAX_ACTIVATION_BYTES",
    "MAX_BLOCKS",
    "MAX_LAYERS",
    "MAX_PARAMS",
    "LayerPlan",
    "ModelPlan",
    "ModelTooLargeError",
    "SpatialOp",
    "check_model_size",
    "drop_path_rates",
    "make_divisible",
    "min_input_size",
    "plan_model",
    "resolve_config",
    "se_channels",
    "stage_width",
]

MAX_PARAMS = 1_000_000_000
"""Above this many parameters (4 GB of fp32 weights) a model is only built with ``allow_large``."""
MAX_ACTIVATION_BYTES = 8 * 2**30
"""Above this much fp32 activation memory for one image of the default input, likewise."""
MAX_LAYERS = 10_000
"""Above this many conv, norm and linear layers (Xception has 160), likewise."""
MAX_BLOCKS = 20_000
"""A config of more blocks (stem and stage repeats; Xception has 12) is an error, opt-in or not:
it is refused before its layers are walked, so a few lines of YAML (aliases repeating a stage
of 1,000 repeats) cannot keep the size guard busy."""


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """Round a channel count to a multiple of ``divisor``, never losing more than 10%."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new < round_limit * value:
        new += divisor
    return new


def stage_width(spec: Any, width_mult: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """A stage's output channels: ``out`` x ``width_mult`` made divisible (``width: scaled``),
    ``out`` as written (``fixed``), or the larger of the two (``at_least``: MobileNetV2's 1280-channel
    last conv, Sandler et al. 2018, section 6.1)."""
    scaled = make_divisible(spec.out * width_mult, divisor, round_limit)
    return {"scaled": scaled, "fixed": spec.out, "at_least": max(spec.out, scaled)}[spec.width]


def se_channels(channels: int, ratio: float, expand: float, se: Any) -> int:
    """Reduced channels of a block's squeeze-excite on ``channels`` (its expanded width):
    ``ratio`` of the block's input (``se.of == "input"``, so ``channels * ratio / expand``) or of
    ``channels`` itself, rounded half to even as timm does, or ``make_divisible(.., se.divisor)``."""
    value = channels * ratio / (expand if se.of == "input" else 1.0)
    return make_divisible(value, se.divisor, se.round_limit) if se.divisor else max(1, round(value))


def drop_path_rates(cfg: Any) -> list[list[float]]:
    """Stochastic depth per stage and block: block i of the n in ``stages`` gets
    ``drop_path_rate * i / n`` (Huang et al. 2016's linear rule, as EfficientNet's code)."""
    counts = cfg.stage_repeats()
    total, start, out = sum(counts), 0, []
    for n in counts:
        out.append([cfg.drop_path_rate * (start + i) / total for i in range(n)] if cfg.drop_path_rate else [])
        start += n
    return out


def _pair(value: Any) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class SpatialOp:
    """A conv or pool along one axis. ``padding="same"`` gives ``ceil(n / stride)`` (symmetric
    padding for odd kernels, TensorFlow's for even ones); an int pads both sides."""

    kernel: int
    stride: int = 1
    dilation: int = 1
    padding: Union[str, int] = "same"

    def out(self, n: int) -> int:
        """Output length for input length ``n`` (below 1: the input is too small)."""
        if self.padding == "same":
            return -(-n // self.stride)
        span = self.dilation * (self.kernel - 1) + 1
        return (n + 2 * int(self.padding) - span) // self.stride + 1

    def min_in(self, out: int) -> int:
        """The smallest input length giving at least ``out`` outputs."""
        if self.padding == "same":
            return (out - 1) * self.stride + 1
        span = self.dilation * (self.kernel - 1) + 1
        return max(1, (out - 1) * self.stride + span - 2 * int(self.padding))


@dataclass(frozen=True)
class _RepCheap:
    """A reparameterisable conv of a ghost module or bottleneck, as ``rep_conv`` reads a row:
    RepGhost's cheap conv (one k x k branch, no 1x1 branch) by default, no squeeze-excite."""

    kernel: int
    branches: int = 1
    scale_branch: bool = False
    se_ratio: float = 0.0


@dataclass(frozen=True)
class AtLeast:
    """No change of size, but an input of at least ``size`` (a branch beside the main path that
    pools: GhostNetV2's attention averages 2x2 windows)."""

    size: int

    def out(self, n: int) -> int:
        return n if n >= self.size else 0

    def min_in(self, out: int) -> int:
        return max(out, self.size)


@dataclass(frozen=True)
class LayerPlan:
    """One Conv2d (or Conv2dSame), BatchNorm2d or Linear of the built model, predicted.

    ``name`` is its module path in the built model; ``key`` the config entry that makes it.
    """

    name: str
    type: str
    key: str
    in_chs: int
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class ModelPlan:
    """Every layer of a config at one input size, and the totals."""

    name: str
    input_size: tuple[int, int, int]
    min_input_size: tuple[int, int]
    layers: list[LayerPlan] = field(repr=False)
    output_shape: tuple[int, ...]
    params: int
    macs: int
    activation_bytes: int
    """fp32 bytes of every conv, norm and linear output for one image (as kept for backward)."""


class _Walker:
    """Follows the builder's construction order, recording layers and the spatial chain."""

    def __init__(self, cfg: ModelConfig, size: tuple[int, int, int]) -> None:
        self.cfg = cfg
        self.norm = cfg.norm.type != "none"
        self.layers: list[LayerPlan] = []
        self.chain: list[tuple[SpatialOp, SpatialOp]] = []
        self.c, self.h, self.w = size

    def out(self, spec: Any) -> int:
        return stage_width(spec, self.cfg.width_mult, self.cfg.channel_divisor, self.cfg.channel_round_limit)

    def conv(self, name: str, key: str, c_in: int, c_out: int, kernel: Any, stride: Any = 1, dilation: Any = 1,
             padding: Union[str, int] = "same", groups: int = 1, bias: bool = False) -> None:
        """A Conv2d on the main path: records it and moves the current shape and the chain on. A list
        of kernels is a ``MixedConv2d``: one conv per channel group (``name.0``, ``name.1``, ...)."""
        if isinstance(kernel, list):
            if len(kernel) > min(c_in, c_out):
                raise ConfigError(self.cfg.name, [f"{key}: a mixed conv of {len(kernel)} channel groups ({name}) needs "
                                                  f"at least {len(kernel)} channels in and out, got {c_in} -> {c_out}"])
            h, w, chain = self.h, self.w, len(self.chain)
            depthwise = groups == c_in and c_in > 1
            for i, (k, part_in, part_out) in enumerate(zip(kernel, split_channels(c_in, len(kernel)),
                                                          split_channels(c_out, len(kernel)))):
                self.h, self.w = h, w
                self.conv(f"{name}.{i}", key, part_in, part_out, k, stride, dilation, padding,
                          part_in if depthwise else 1, bias)
            del self.chain[chain + 1:]  # the groups walk the same spatial chain
            self.c = c_out
            return
        (kh, kw), (sh, sw), (dh, dw) = _pair(kernel), _pair(stride), _pair(dilation)
        padding = 0 if padding == "valid" else padding
        kind = "Conv2dSame" if padding == "same" and not (kh % 2 and kw % 2) else "Conv2d"
        ops = (SpatialOp(kh, sh, dh, 0 if self.cfg.row_padding == "none" else padding), SpatialOp(kw, sw, dw, padding))
        h, w = ops[0].out(self.h), ops[1].out(self.w)
        per_out = c_in // groups * kh * kw
        self.layers.append(LayerPlan(name, kind, key, c_in, (c_out, h, w), c_out * (per_out + bias),
                                     c_out * h * w * per_out))
        self.chain.append(ops)
        self.c, self.h, self.w = c_out, h, w

    def bn(self, name: str, key: str, channels: int, h: int, w: int) -> None:
        """The config's norm (``BatchNorm2d`` or ``LayerNorm2d``: a scale and a shift per channel)."""
        if self.norm:
            kind = "LayerNorm2d" if self.cfg.norm.type == "layernorm" else "BatchNorm2d"
            self.layers.append(LayerPlan(name, kind, key, channels, (channels, h, w), 2 * channels, 0))

    def conv_norm(self, prefix: str, key: str, c_out: int, kernel: Any, stride: Any = 1, dilation: Any = 1,
                  padding: Union[str, int] = "same", groups: int = 1, norm: bool = True, bias: bool = False) -> None:
        """``ConvNormAct``: ``prefix.conv`` then ``prefix.norm``."""
        self.conv(f"{prefix}.conv", key, self.c, c_out, kernel, stride, dilation, padding, groups, bias)
        if norm:
            self.bn(f"{prefix}.norm", key, self.c, self.h, self.w)

    def pooled_conv(self, name: str, key: str, c_in: int, c_out: int, bias: bool = True) -> None:
        """A 1x1 conv on a pooled 1x1 map (squeeze-excite, MobileNetV3's head): off the spatial
        chain."""
        self.layers.append(LayerPlan(name, "Conv2d", key, c_in, (c_out, 1, 1), c_in * c_out + c_out * bias,
                                     c_in * c_out))

    def squeeze_excite(self, prefix: str, key: str, ratio: float, expand: float) -> None:
        if ratio:
            reduced = se_channels(self.c, ratio, expand, self.cfg.se)
            self.pooled_conv(f"{prefix}.se.conv_reduce", key, self.c, reduced)
            self.pooled_conv(f"{prefix}.se.conv_expand", key, reduced, self.c)

    def block(self, prefix: str, key: str, spec: Any, stride: Any, index: int = 0) -> None:
        """One block of a row (``index``: its place in the row)."""
        if spec.type == "maxpool":
            self.max_pool(spec.kernel, stride)
            return
        out = self.out(spec)
        if spec.type == "conv" or (spec.type == "ds" and not self.cfg.separable):
            padding = getattr(spec, "padding", "same")
            self.conv_norm(prefix, key, out, spec.kernel, stride, spec.dilation, padding, bias=getattr(spec, "bias", False))
        elif spec.type == "ds":
            mid = self.c * spec.depth_multiplier
            self.conv_norm(f"{prefix}.dw", key, mid, spec.kernel, stride, spec.dilation, groups=self.c,
                           norm=spec.mid_norm_act)
            self.squeeze_excite(prefix, key, spec.se_ratio, 1.0)
            self.conv_norm(f"{prefix}.pw", key, out, 1)
        elif spec.type in ("ir", "uib"):
            self.universal_inverted_residual(prefix, key, spec, out, stride)
        elif spec.type == "fused":
            mid = make_divisible(self.c * spec.expand, self.cfg.channel_divisor, self.cfg.channel_round_limit)
            self.conv_norm(f"{prefix}.expand", key, mid, spec.kernel, stride, spec.dilation)
            self.squeeze_excite(prefix, key, spec.se_ratio, spec.expand)
            self.conv_norm(f"{prefix}.project", key, out, 1)
        elif spec.type == "mqa":
            self.mobile_attention(prefix, key, spec, out)
        elif spec.type == "convnext":
            self.convnext_block(prefix, key, spec, out, stride)
        elif spec.type == "ghost":
            self.ghost_bottleneck(prefix, key, spec, out, stride)
        elif spec.type == "shuffle":
            self.shuffle_unit(prefix, key, spec, out, stride)
        elif spec.type == "rep" and spec.separable:
            self.rep_conv(f"{prefix}.dw", key, spec, self.c, spec.kernel, stride, self.c if self.cfg.separable else 1)
            self.rep_conv(f"{prefix}.pw", key, spec, out, 1, 1, 1)
        elif spec.type == "rep":
            self.rep_conv(prefix, key, spec, out, spec.kernel, stride, 1)
        elif spec.type == "repvit":
            self.repvit_block(prefix, key, spec, out, stride, spec.se_ratio if index % 2 == 0 else 0.0)
        else:
            self.xception(prefix, key, spec, out, stride)

    def universal_inverted_residual(self, prefix: str, key: str, spec: Any, out: int, stride: Any) -> None:
        """``UniversalInvertedResidual`` (an ``ir`` row is one with its middle depthwise conv only)."""
        mixed = getattr(spec, "kernels", None)
        kernels = (getattr(spec, "start_kernel", 0), list(mixed) if mixed else spec.kernel, getattr(spec, "end_kernel", 0))
        strided = next((i for i in (1, 0, 2) if kernels[i]), None)
        dilation = getattr(spec, "dilation", 1)
        mid = make_divisible(self.c * spec.expand, self.cfg.channel_divisor, self.cfg.channel_round_limit)

        def dw(name: str, i: int) -> None:
            if kernels[i]:
                self.conv_norm(f"{prefix}.{name}", key, self.c, kernels[i], stride if i == strided else 1, dilation,
                               groups=self.c if self.cfg.separable else 1)

        def pointwise(groups: int) -> Any:
            return [1] * groups if groups > 1 else 1

        dw("dw_start", 0)
        self.conv_norm(f"{prefix}.expand", key, mid, pointwise(getattr(spec, "expand_groups", 1)))
        dw("dw", 1)
        self.squeeze_excite(prefix, key, spec.se_ratio, spec.expand)
        self.conv_norm(f"{prefix}.project", key, out, pointwise(getattr(spec, "project_groups", 1)))
        dw("dw_end", 2)
        if spec.type == "uib" and self.cfg.layer_scale is not None:
            self.extra_params(f"{prefix}.layer_scale", key, out)

    def mobile_attention(self, prefix: str, key: str, spec: Any, out: int) -> None:
        """``MobileMultiQueryAttention``: the query, key and value projections see the same
        input; the map keeps its size."""
        c_in, h, w = self.c, self.h, self.w
        self.bn(f"{prefix}.norm", key, c_in, h, w)
        attn = f"{prefix}.attn"
        self.conv(f"{attn}.query.proj", key, c_in, spec.heads * spec.key_dim, 1)
        chain = len(self.chain)
        for part in ("key", "value"):
            self.c, self.h, self.w = c_in, h, w
            if spec.kv_stride > 1:
                self.conv(f"{attn}.{part}.down_conv", key, c_in, c_in, spec.kernel, spec.kv_stride,
                          groups=c_in if self.cfg.separable else 1)
                self.bn(f"{attn}.{part}.norm", key, c_in, self.h, self.w)
            self.conv(f"{attn}.{part}.proj", key, c_in, spec.key_dim, 1)
        del self.chain[chain:]  # keys and values are off the main path: they never empty it
        self.c, self.h, self.w = spec.heads * spec.key_dim, h, w
        self.conv(f"{attn}.output.proj", key, self.c, out, 1)
        if self.cfg.layer_scale is not None:
            self.extra_params(f"{prefix}.layer_scale", key, out)

    def max_pool(self, kernel: Any, stride: Any) -> None:
        """``MaxPool``: no layer, the map shrinks; padded by ``(k - 1) // 2``."""
        (kh, kw), (sh, sw) = _pair(kernel), _pair(stride)
        ops = (SpatialOp(kh, sh, 1, (kh - 1) // 2), SpatialOp(kw, sw, 1, (kw - 1) // 2))
        self.chain.append(ops)
        self.h, self.w = ops[0].out(self.h), ops[1].out(self.w)

    def rep_conv(self, prefix: str, key: str, spec: Any, out: int, kernel: Any, stride: Any, groups: int,
                 identity: bool = True) -> None:
        """``RepConv``: its identity norm (unless ``identity`` is false), k x k branches and 1x1
        scale branch side by side on the same input (one of them on the spatial chain), or,
        reparameterised, one conv with a bias."""
        c_in, h, w = self.c, self.h, self.w
        if self.cfg.reparameterized:
            self.conv(f"{prefix}.reparam_conv", key, c_in, out, kernel, stride, groups=groups, bias=True)
        else:
            if identity and c_in == out and _pair(stride) == (1, 1):
                self.bn(f"{prefix}.identity", key, out, h, w)
            chain = len(self.chain)
            for i in range(spec.branches):
                self.c, self.h, self.w = c_in, h, w
                self.conv_norm(f"{prefix}.conv_kxk.{i}", key, out, kernel, stride, groups=groups)
            if spec.scale_branch and _pair(kernel) != (1, 1):
                self.c, self.h, self.w = c_in, h, w
                self.conv_norm(f"{prefix}.conv_scale", key, out, 1, stride, padding=0, groups=groups)
            del self.chain[chain + 1:]  # the branches beside the first walk the same spatial chain
        self.squeeze_excite(prefix, key, spec.se_ratio, 1.0)

    def fused_conv_norm(self, prefix: str, key: str, c_out: int, kernel: Any, stride: Any = 1, groups: int = 1) -> None:
        """A conv + norm, or reparameterised the conv with a bias that it folds into."""
        self.conv_norm(prefix, key, c_out, kernel, stride, groups=groups, norm=not self.cfg.reparameterized,
                       bias=self.cfg.reparameterized)

    def repvit_block(self, prefix: str, key: str, spec: Any, out: int, stride: Any, se_ratio: float) -> None:
        """``RepViTBlock``: [downsampling: a stride-1 block, a depthwise conv of the stride, a 1x1
        conv], the token mixer (its depthwise k x k conv + norm, 1x1 depthwise conv and norm beside
        it), [SE], the 1x1 MLP; reparameterised, each a conv with a bias."""
        if _pair(stride) != (1, 1) or self.c != out:
            c_in = self.c
            self.repvit_block(f"{prefix}.pre_block", key, spec, c_in, 1, 0.0)
            self.fused_conv_norm(f"{prefix}.spatial", key, c_in, spec.kernel, stride, c_in if self.cfg.separable else 1)
            self.fused_conv_norm(f"{prefix}.channel", key, out, 1)
        elif not self.cfg.separable:
            self.fused_conv_norm(f"{prefix}.token_mixer", key, out, spec.kernel)
            self.squeeze_excite(prefix, key, se_ratio, 1.0)
        else:
            mixer, h, w = f"{prefix}.token_mixer", self.h, self.w
            self.fused_conv_norm(f"{mixer}.conv", key, out, spec.kernel, groups=out)
            if not self.cfg.reparameterized:
                chain = len(self.chain)
                if spec.mixer_norm == "per_branch":
                    self.conv_norm(f"{mixer}.conv1", key, out, 1, padding=0, groups=out)
                else:  # a bare conv with a bias
                    self.conv(f"{mixer}.conv1", key, out, out, 1, padding=0, groups=out, bias=True)
                del self.chain[chain:]  # beside the k x k conv, on the same map
                self.h, self.w = h, w
                if spec.mixer_norm == "after_sum":
                    self.bn(f"{mixer}.norm", key, out, h, w)
            self.squeeze_excite(prefix, key, se_ratio, 1.0)
        self.fused_conv_norm(f"{prefix}.mlp.conv1", key, int(out * spec.expand), 1)
        self.fused_conv_norm(f"{prefix}.mlp.conv2", key, out, 1)

    def convnext_block(self, prefix: str, key: str, spec: Any, out: int, stride: Any) -> None:
        """``ConvNeXtBlock``: [norm, stride x stride conv with bias], depthwise conv with bias, norm,
        two 1x1 convs with biases, [layer scale]."""
        if _pair(stride) != (1, 1) or self.c != out:
            self.bn(f"{prefix}.downsample.0", key, self.c, self.h, self.w)
            self.conv(f"{prefix}.downsample.1", key, self.c, out, stride, stride, padding=0, bias=True)
        self.conv_norm(f"{prefix}.dw", key, out, spec.kernel, groups=out if self.cfg.separable else 1, bias=True)
        self.conv(f"{prefix}.expand.conv", key, out, int(out * spec.expand), 1, padding=0, bias=True)
        self.conv(f"{prefix}.project.conv", key, self.c, out, 1, padding=0, bias=True)
        if self.cfg.layer_scale is not None:
            self.extra_params(f"{prefix}.layer_scale", key, out)

    def ghost_module(self, prefix: str, key: str, out: int, attention: bool = False, rep: bool = False,
                     rep_branches: int = 0) -> None:
        """``GhostModule``: a 1x1 conv to ``ceil(out / 2)``, a depthwise 3x3 conv of those, cut to
        ``out``; with ``attention`` beside them the 1x1, 1x5 and 5x1 convs of GhostNetV2's DFC
        attention on the input pooled by 2 (which needs a map of at least 2x2). ``rep``: a 1x1
        conv to ``out``, then a depthwise 3x3 ``RepConv`` of those (its identity norm beside).
        ``rep_branches``: both convs ``RepConv``s of that many branches (GhostNetV3)."""
        c_in, h, w = self.c, self.h, self.w
        init = out if rep else -(-out // 2)
        groups = init if self.cfg.separable else 1
        if rep_branches:
            self.rep_conv(f"{prefix}.primary", key, _RepCheap(kernel=1, branches=rep_branches), init, 1, 1, 1,
                          identity=False)
            self.rep_conv(f"{prefix}.cheap", key, _RepCheap(kernel=3, branches=rep_branches, scale_branch=True),
                          init, 3, 1, groups)
        elif rep:
            self.conv_norm(f"{prefix}.primary", key, init, 1, padding=0)
            self.rep_conv(f"{prefix}.cheap", key, _RepCheap(kernel=3), init, 3, 1, groups)
            return
        else:
            self.conv_norm(f"{prefix}.primary", key, init, 1, padding=0)
            self.conv_norm(f"{prefix}.cheap", key, init, 3, groups=groups)
        if attention:
            self.chain.insert(len(self.chain) - 2, (AtLeast(2), AtLeast(2)))  # the pool's input, at the module's
            c, h2, w2, chain = self.c, self.h, self.w, len(self.chain)
            self.c, self.h, self.w = c_in, h // 2, w // 2
            groups = out if self.cfg.separable else 1
            self.conv_norm(f"{prefix}.short.0", key, out, 1, padding=0)
            self.conv_norm(f"{prefix}.short.1", key, out, (1, 5), groups=groups)
            self.conv_norm(f"{prefix}.short.2", key, out, (5, 1), groups=groups)
            del self.chain[chain:]
            self.c, self.h, self.w = c, h2, w2
        self.c = out

    def ghost_bottleneck(self, prefix: str, key: str, spec: Any, out: int, stride: Any) -> None:
        """``GhostBottleneck``: ghost module, [strided depthwise conv], [SE], ghost module; beside
        them, where the shape changes, the shortcut's depthwise and 1x1 convs."""
        c_in, h, w = self.c, self.h, self.w
        mid = make_divisible(spec.mid * self.cfg.width_mult, self.cfg.channel_divisor,
                             self.cfg.channel_round_limit) if spec.width == "scaled" else spec.mid
        self.ghost_module(f"{prefix}.ghost1", key, mid, spec.attention, spec.rep, spec.rep_branches)
        dw_groups = mid if self.cfg.separable else 1
        if _pair(stride) != (1, 1) and spec.rep_branches:
            dw = _RepCheap(kernel=spec.kernel, branches=spec.rep_branches, scale_branch=True)
            self.rep_conv(f"{prefix}.dw", key, dw, mid, spec.kernel, stride, dw_groups)
        elif _pair(stride) != (1, 1):
            self.conv_norm(f"{prefix}.dw", key, mid, spec.kernel, stride, groups=dw_groups)
        self.squeeze_excite(prefix, key, spec.se_ratio, mid / c_in)  # ``se.of: input`` means of c_in
        self.ghost_module(f"{prefix}.ghost2", key, out, rep=spec.rep, rep_branches=spec.rep_branches)
        if c_in != out or _pair(stride) != (1, 1):
            c, h2, w2, chain = self.c, self.h, self.w, len(self.chain)
            self.c, self.h, self.w = c_in, h, w
            self.conv_norm(f"{prefix}.shortcut.0", key, c_in, spec.kernel, stride,
                           groups=c_in if self.cfg.separable else 1)
            self.conv_norm(f"{prefix}.shortcut.1", key, out, 1, padding=0)
            del self.chain[chain:]  # beside the main path, which walks the same spatial chain
            self.c, self.h, self.w = c, h2, w2

    def shuffle_unit(self, prefix: str, key: str, spec: Any, out: int, stride: Any) -> None:
        """``ShuffleUnit``: with a stride, the shortcut (depthwise, 1x1) first, then the branch
        (1x1, depthwise, 1x1) on the whole input; without, the branch on half of it."""
        c_in, h, w, half = self.c, self.h, self.w, out // 2
        groups = (lambda c: c) if self.cfg.separable else (lambda c: 1)
        if out % 2:
            raise ConfigError(self.cfg.name, [f"{key}: a shuffle unit splits its output in two halves, but width_mult "
                                              f"makes it {out} channels: use a channel_divisor of 2 or more"])
        if _pair(stride) != (1, 1):
            chain = len(self.chain)
            self.conv_norm(f"{prefix}.shortcut.0", key, c_in, spec.kernel, stride, groups=groups(c_in))
            self.conv_norm(f"{prefix}.shortcut.1", key, half, 1)
            del self.chain[chain:]  # beside the branch, which walks the same spatial chain
            self.c, self.h, self.w = c_in, h, w
        elif c_in != out:
            raise ConfigError(self.cfg.name, [f"{key}: a shuffle unit of stride 1 keeps its width, but {c_in} "
                                              f"channels come in and out is {out}: give the stage's first unit "
                                              "stride 2"])
        else:
            self.c = half
        self.conv_norm(f"{prefix}.branch.0", key, half, 1)
        self.conv_norm(f"{prefix}.branch.1", key, half, spec.kernel, stride, groups=groups(half))
        self.conv_norm(f"{prefix}.branch.2", key, half, 1)
        self.c = out

    def extra_params(self, name: str, key: str, count: int) -> None:
        """A module of ``count`` parameters and no MACs on the main path (a layer scale)."""
        self.layers.append(LayerPlan(name, "LayerScale2d", key, self.c, (self.c, self.h, self.w), count, 0))

    def xception(self, prefix: str, key: str, spec: Any, out: int, stride: int) -> None:
        c_in, h, w = self.c, self.h, self.w
        if c_in != out or stride != 1:  # the shortcut is registered before the body
            hs, ws = SpatialOp(1, stride, 1, 0).out(h), SpatialOp(1, stride, 1, 0).out(w)
            per = (out, hs, ws)
            self.layers.append(LayerPlan(f"{prefix}.shortcut.conv", "Conv2d", key, c_in, per, c_in * out, c_in * out * hs * ws))
            self.bn(f"{prefix}.shortcut.norm", key, out, hs, ws)
        index = 0
        for i in range(spec.convs):
            if spec.grow_first:
                conv_in, conv_out = (c_in if i == 0 else out), out
            else:
                conv_in, conv_out = c_in, (c_in if i < spec.convs - 1 else out)
            if i > 0 or spec.start_with_act:
                index += 1  # the activation
            body = f"{prefix}.body.{index}"
            if self.cfg.separable:
                self.conv(f"{body}.dw.conv", key, conv_in, conv_in, spec.kernel, groups=conv_in)
                self.conv(f"{body}.pw.conv", key, conv_in, conv_out, 1)
            else:
                self.conv(body, key, conv_in, conv_out, spec.kernel)
            self.bn(f"{prefix}.body.{index + 1}", key, conv_out, self.h, self.w)
            index += 2
        if stride != 1:
            pool = SpatialOp(3, stride, 1, 1)
            self.chain.append((pool, pool))
            self.h, self.w = pool.out(self.h), pool.out(self.w)


def _walk(cfg: ModelConfig, size: tuple[int, int, int]) -> _Walker:
    walker = _Walker(cfg, size)
    index = 0
    for i, spec in enumerate(cfg.stem):
        for r in range(spec.repeat):
            walker.block(f"stem.{index}", f"stem[{i}]", spec, spec.stride if r == 0 else 1)
            index += 1
        index += spec.dropout > 0
    for i, (spec, repeats) in enumerate(zip(cfg.stages, cfg.stage_repeats())):
        for r in range(repeats):
            walker.block(f"stages.{i}.{r}", f"stages[{i}]", spec, spec.stride if r == 0 else 1, r)
    if cfg.head.norm:
        walker.bn("pooled_norm", "head.norm", walker.c, 1, 1)
    if cfg.head.conv is not None:
        head = cfg.head.conv
        walker.pooled_conv("head_conv.conv", "head.conv", walker.c, head.out, head.bias)
        walker.c = head.out
        if head.norm:
            walker.bn("head_conv.norm", "head.conv", head.out, 1, 1)
    if cfg.num_classes > 0:
        c, k = walker.c, cfg.num_classes
        if cfg.head.classifier == "linear":
            walker.layers.append(LayerPlan("classifier", "Linear", "num_classes", c, (k,), c * k + k, c * k))
        else:  # NormLinearClassifier: [BatchNorm1d, Linear] per head, or the one Linear they fold into
            heads = ("",) if cfg.reparameterized else ("", "_dist")[:1 + cfg.head.distilled]
            for suffix in heads:
                if not cfg.reparameterized:
                    walker.layers.append(LayerPlan(f"classifier.norm{suffix}", "BatchNorm1d", "head.classifier", c,
                                                   (c,), 2 * c, 0))
                walker.layers.append(LayerPlan(f"classifier.linear{suffix}", "Linear", "num_classes", c, (k,),
                                               c * k + k, c * k))
    return walker


MAX_WALKED_LAYERS = 100_000
"""A config of more conv, norm and linear layers than this is an error before anything is walked
(``MAX_LAYERS`` is the opt-in limit for building; Xception has 160)."""


def _layers_per_block(spec: Any) -> int:
    """Conv and norm layers one block of a stage has (squeeze-excite's two convs included)."""
    se = 2 if getattr(spec, "se_ratio", 0) else 0
    return {"conv": 2, "ds": 4 + se, "ir": 6 + se, "uib": 12 + se, "fused": 4 + se, "mqa": 11, "convnext": 6, "shuffle": 10,
            "ghost": 14 + se + 10 * getattr(spec, "rep_branches", 0),
            "repvit": 20 + se,
            "rep": (2 * getattr(spec, "branches", 1) + 3) * (1 + getattr(spec, "separable", False)) + se,
            "maxpool": 0}.get(
        spec.type, 3 * getattr(spec, "convs", 1) + 2)


def min_input_size(cfg: ModelConfig) -> tuple[int, int]:
    """The smallest (H, W) every layer of ``cfg`` gives a non-empty output for (structural;
    a config's ``min_input_size`` may ask for more)."""
    chain = _walk(cfg, (cfg.in_chans, 1, 1)).chain
    h = w = 1
    for op_h, op_w in reversed(chain):
        h, w = op_h.min_in(h), op_w.min_in(w)
    return h, w


def resolve_config(
    name: str,
    family: str,
    defaults: Mapping[str, Any],
    variant: Mapping[str, Any],
    overrides: Mapping[str, Any],
    source: str,
) -> ModelConfig:
    """Merge and validate a config (``dszoo.config.merge_config``), then check that its input
    is at least the smallest one the network's layers accept; raise one ``ConfigError``."""
    cfg = merge_config(name, family, defaults, variant, overrides, source)
    blocks = [(f"stem[{i}]", spec.repeat, spec) for i, spec in enumerate(cfg.stem)]
    blocks += [(f"stages[{i}]", repeats, spec) for i, (spec, repeats) in enumerate(zip(cfg.stages, cfg.stage_repeats()))]
    total = sum(repeat for _, repeat, _ in blocks)
    where = config_source(name, variant, overrides, source)
    if total > MAX_BLOCKS:  # before walking them: the check costs time in the file's size, not the network's
        key = max(blocks, key=lambda b: b[1])[0]
        raise ConfigError(where, [f"{key}: the network would have {total:,} blocks in all, above the limit of "
                                  f"{MAX_BLOCKS:,} (check the repeat counts and the number of stages)"])
    layers = [(key, repeat * _layers_per_block(spec), repeat, spec) for key, repeat, spec in blocks]
    if sum(n for _, n, _, _ in layers) > MAX_WALKED_LAYERS:  # Xception's convs multiply its repeats
        key, n, repeat, spec = max(layers, key=lambda item: item[1])
        product = f"repeat {repeat:,} x {getattr(spec, 'convs', 1):,} convs" if spec.type == "xception" else \
            f"repeat {repeat:,}"
        raise ConfigError(where, [f"{key}: the network would have {sum(n for _, n, _, _ in layers):,} layers "
                                  f"({key}: {product} alone gives {n:,}), above the limit of {MAX_WALKED_LAYERS:,}"])
    smallest = min_input_size(cfg)
    declared = cfg.min_input_size or (1, 1)
    least = (max(smallest[0], declared[0]), max(smallest[1], declared[1]))
    c, h, w = cfg.input_size
    if h < least[0] or w < least[1]:
        why = "min_input_size" if least == tuple(declared) else "its layers leave an empty map below that"
        raise ConfigError(config_source(name, variant, overrides, source),
                          [f"input_size: {c}x{h}x{w} is smaller than the minimum {least[0]}x{least[1]} "
                           f"of this network ({why})"])
    return cfg


def plan_model(cfg: ModelConfig, input_size: Optional[tuple[int, int, int]] = None) -> ModelPlan:
    """Predict every layer of the model ``cfg`` describes at ``input_size`` (default: the config's).

    Raises ``ValueError`` when the input is smaller than the structural minimum.
    """
    c, h, w = input_size if input_size is not None else cfg.input_size
    smallest = min_input_size(cfg)
    if h < smallest[0] or w < smallest[1]:
        raise ValueError(f"input {h}x{w} is smaller than the minimum {smallest[0]}x{smallest[1]} of {cfg.name}: "
                         "a layer would have an empty output")
    walker = _walk(cfg, (c, h, w))
    layers = walker.layers
    features: tuple[int, ...] = (walker.c,)
    out = layers[-1].output_shape if layers and layers[-1].type == "Linear" else features
    activations = sum(math.prod(layer.output_shape) for layer in layers) + c * h * w
    return ModelPlan(
        name=cfg.name, input_size=(c, h, w), min_input_size=smallest, layers=layers, output_shape=out,
        params=sum(layer.params for layer in layers), macs=sum(layer.macs for layer in layers),
        activation_bytes=4 * activations,
    )


class ModelTooLargeError(ConfigError):
    """A config whose size exceeds ``MAX_PARAMS`` or ``MAX_ACTIVATION_BYTES``: refused unbuilt."""


_OPT_IN = "pass allow_large=True (scripts: --allow-large) if this size is intended"


def check_model_size(plan: ModelPlan) -> None:
    """Raise ``ModelTooLargeError`` naming the config key of the largest layer when ``plan``
    exceeds the limits; ``create_model(..., allow_large=True)`` builds it anyway."""
    problems = []
    if plan.params > MAX_PARAMS:
        top = max(plan.layers, key=lambda layer: layer.params)
        problems.append(
            f"{top.key}: the model would have {plan.params:,} parameters ({plan.params * 4 / 2**30:.1f} GiB in fp32), "
            f"above the limit of {MAX_PARAMS:,}; the largest layer is {top.name} ({top.in_chs:,} -> "
            f"{top.output_shape[0]:,} channels, {top.params:,} parameters); {_OPT_IN}"
        )
    if len(plan.layers) > MAX_LAYERS:
        key = Counter(layer.key for layer in plan.layers).most_common(1)[0][0]
        problems.append(f"{key}: the model would have {len(plan.layers):,} layers, above the limit of "
                        f"{MAX_LAYERS:,} (check the repeat counts); {_OPT_IN}")
    if plan.activation_bytes > MAX_ACTIVATION_BYTES:
        top = max(plan.layers, key=lambda layer: math.prod(layer.output_shape))
        problems.append(
            f"input_size: one {_shape(plan.input_size)} image would need {plan.activation_bytes / 2**30:.1f} GiB of "
            f"activations, above the limit of {MAX_ACTIVATION_BYTES / 2**30:.0f} GiB; the largest is {top.name} "
            f"({_shape(top.output_shape)}, from {top.key}); {_OPT_IN}"
        )
    if problems:
        raise ModelTooLargeError(plan.name, problems)


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))
