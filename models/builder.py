"""The one generic builder: stem -> stages -> head, from a validated ``ModelConfig``.

Each stage asks ``BLOCK_BUILDERS`` for its block type; ``separable=False`` swaps every
depthwise-separable conv for a standard conv with the same channels, kernel and stride
(MobileNets, Table 4 "Conv MobileNet").
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .blocks import (NORMS, CepstralMeanNorm, ConvNeXtBlock, ConvNormAct, DepthwiseSeparableConv, FusedInvertedResidual,
                     GhostBottleneck, InvertedResidual, MaxPool, MobileMultiQueryAttention, MobileOneBlock,
                     NormLinearClassifier, RepConv, RepViTBlock, ResidualConv, SeparableConv2d, ShuffleUnit,
                     SqueezeExcite, UniversalInvertedResidual, XceptionBlock, calls_unwatched, inert, pair, run_sequence,
                     standard_conv)
from .blocks.layers import Conv2dSame, NormLike, PooledLinear
from .blocks.mobile import SEFactory

from .config import (ConvNeXtStage, ConvStage, DSStage, FusedStage, GhostStage, IRStage, ModelConfig, MQAStage,
                     PoolStage, RepStage, RepViTStage, SEConfig, ShuffleStage, UIBStage, XceptionStage)
from .plan import (check_model_size, drop_path_rates, make_divisible, min_input_size, plan_model, se_channels,
                   stage_width)

__all__ = ["BLOCK_BUILDERS", "ZooFeatures", "ZooNet", "build_model", "first_conv_name"]


@dataclass(frozen=True)
class BuildContext:
    """What every block builder needs besides its own stage spec: the model's settings, the
    stage's activation and the stochastic-depth rate of the block being built."""

    norm: NormLike
    act: str
    separable: bool
    width_mult: float
    channel_divisor: int
    round_limit: float = 0.9
    se: SEConfig = SEConfig()
    drop_path: float = 0.0
    layer_scale: Optional[float] = None
    reparameterized: bool = False
    index: int = 0  # the block's place in its row

    def chs(self, channels: float) -> int:
        """``make_divisible`` with the config's divisor and round limit (timm's rule)."""
        return make_divisible(channels, self.channel_divisor, self.round_limit)

    def out(self, spec: Any) -> int:
        """A stage's output channels under its ``width`` rule."""
        return stage_width(spec, self.width_mult, self.channel_divisor, self.round_limit)

    def se_factory(self, ratio: float, expand: float) -> Optional[SEFactory]:
        """The squeeze-excite a block with ``se_ratio`` and expansion ``expand`` gets (``SEConfig``)."""
        if not ratio:
            return None
        se = self.se

        def make(channels: int, block_act: Any) -> nn.Module:
            return SqueezeExcite(channels, se_channels(channels, ratio, expand, se), act=se.act or block_act,
                                 gate=se.gate)

        return make


def _conv_block(in_chs: int, spec: ConvStage, stride: Any, ctx: BuildContext) -> nn.Module:
    # a residual needs the map's size kept: "same" padding (a valid or fixed padding may change it)
    kind = partial(ResidualConv, drop_path=ctx.drop_path) if spec.skip and spec.padding == "same" else ConvNormAct
    return kind(in_chs, ctx.out(spec), spec.kernel, stride=stride, dilation=spec.dilation, padding=spec.padding,
                bias=spec.bias, norm=ctx.norm, act=ctx.act)


def _ds_block(in_chs: int, spec: DSStage, stride: Any, ctx: BuildContext) -> nn.Module:
    if not ctx.separable:
        return ConvNormAct(
            in_chs, ctx.out(spec), spec.kernel, stride=stride, dilation=spec.dilation,
            norm=ctx.norm, act=ctx.act,
        )
    return DepthwiseSeparableConv(
        in_chs, ctx.out(spec), kernel_size=spec.kernel, stride=stride, dilation=spec.dilation,
        depth_multiplier=spec.depth_multiplier, norm=ctx.norm, act=ctx.act,
        mid_norm_act=spec.mid_norm_act, se=ctx.se_factory(spec.se_ratio, 1.0), pw_act=spec.pw_act,
        skip=spec.skip, drop_path=ctx.drop_path,
    )


def _ir_block(in_chs: int, spec: IRStage, stride: Any, ctx: BuildContext) -> nn.Module:
    # separable=False: the depthwise conv as a standard one; expansion and projection stay
    return InvertedResidual(in_chs, ctx.out(spec), ctx.chs(in_chs * spec.expand),
                            kernel_size=list(spec.kernels) if spec.kernels else spec.kernel, stride=stride,
                            dilation=spec.dilation, norm=ctx.norm, act=ctx.act,
                            se=ctx.se_factory(spec.se_ratio, spec.expand), skip=spec.skip, drop_path=ctx.drop_path,
                            depthwise=ctx.separable, expand_groups=spec.expand_groups,
                            project_groups=spec.project_groups)


def _uib_block(in_chs: int, spec: UIBStage, stride: Any, ctx: BuildContext) -> nn.Module:
    return UniversalInvertedResidual(
        in_chs, ctx.out(spec), ctx.chs(in_chs * spec.expand), start_kernel=spec.start_kernel, kernel_size=spec.kernel,
        end_kernel=spec.end_kernel, stride=stride, norm=ctx.norm, act=ctx.act,
        se=ctx.se_factory(spec.se_ratio, spec.expand), skip=spec.skip, layer_scale=ctx.layer_scale,
        drop_path=ctx.drop_path, depthwise=ctx.separable)


def _fused_block(in_chs: int, spec: FusedStage, stride: Any, ctx: BuildContext) -> nn.Module:
    return FusedInvertedResidual(
        in_chs, ctx.out(spec), ctx.chs(in_chs * spec.expand), kernel_size=spec.kernel, stride=stride,
        dilation=spec.dilation, norm=ctx.norm, act=ctx.act, se=ctx.se_factory(spec.se_ratio, spec.expand),
        skip=spec.skip, drop_path=ctx.drop_path)


def _mqa_block(in_chs: int, spec: MQAStage, stride: Any, ctx: BuildContext) -> nn.Module:
    return MobileMultiQueryAttention(
        in_chs, ctx.out(spec), num_heads=spec.heads, key_dim=spec.key_dim, kv_stride=spec.kv_stride,
        dw_kernel_size=spec.kernel, norm=ctx.norm, skip=spec.skip, layer_scale=ctx.layer_scale,
        drop_path=ctx.drop_path, depthwise=ctx.separable)


def _convnext_block(in_chs: int, spec: ConvNeXtStage, stride: Any, ctx: BuildContext) -> nn.Module:
    out = ctx.out(spec)
    return ConvNeXtBlock(in_chs, out, int(out * spec.expand), kernel_size=spec.kernel, stride=stride, norm=ctx.norm,
                         act=ctx.act, layer_scale=ctx.layer_scale, drop_path=ctx.drop_path, depthwise=ctx.separable)


def _ghost_block(in_chs: int, spec: GhostStage, stride: Any, ctx: BuildContext) -> nn.Module:
    mid = ctx.chs(spec.mid * ctx.width_mult) if spec.width == "scaled" else spec.mid
    return GhostBottleneck(in_chs, mid, ctx.out(spec), kernel_size=spec.kernel, stride=stride, norm=ctx.norm,
                           act=ctx.act, se=ctx.se_factory(spec.se_ratio, mid / in_chs), depthwise=ctx.separable,
                           attention=spec.attention, rep=spec.rep, rep_branches=spec.rep_branches,
                           reparameterized=ctx.reparameterized)


def _shuffle_block(in_chs: int, spec: ShuffleStage, stride: Any, ctx: BuildContext) -> nn.Module:
    return ShuffleUnit(in_chs, ctx.out(spec), kernel_size=spec.kernel, stride=stride, norm=ctx.norm, act=ctx.act,
                       depthwise=ctx.separable)


def _rep_block(in_chs: int, spec: RepStage, stride: Any, ctx: BuildContext) -> nn.Module:
    common = dict(stride=stride, branches=spec.branches, scale_branch=spec.scale_branch, norm=ctx.norm, act=ctx.act,
                  se=ctx.se_factory(spec.se_ratio, 1.0), drop_path=ctx.drop_path, inference=ctx.reparameterized)
    if spec.separable:
        return MobileOneBlock(in_chs, ctx.out(spec), spec.kernel, depthwise=ctx.separable, **common)
    return RepConv(in_chs, ctx.out(spec), spec.kernel, **common)


def _repvit_block(in_chs: int, spec: RepViTStage, stride: Any, ctx: BuildContext) -> nn.Module:
    # the cross-block squeeze-excite: on a row's first, third, ... block (never a downsampling one)
    se_ratio = spec.se_ratio if ctx.index % 2 == 0 else 0.0
    return RepViTBlock(in_chs, ctx.out(spec), spec.kernel, mlp_ratio=spec.expand, stride=stride, norm=ctx.norm,
                       act=ctx.act, se=ctx.se_factory(se_ratio, 1.0), norm_after_sum=spec.mixer_norm == "after_sum",
                       drop_path=ctx.drop_path, depthwise=ctx.separable, inference=ctx.reparameterized)


def _pool_block(in_chs: int, spec: PoolStage, stride: Any, ctx: BuildContext) -> nn.Module:
    return MaxPool(in_chs, spec.kernel, stride)


def _xception_block(in_chs: int, spec: XceptionStage, stride: Any, ctx: BuildContext) -> nn.Module:
    return XceptionBlock(
        in_chs, ctx.out(spec), stride=stride, num_convs=spec.convs, kernel_size=spec.kernel,
        start_with_act=spec.start_with_act, grow_first=spec.grow_first, norm=ctx.norm, act=ctx.act,
        sep_conv=_sep_conv if ctx.separable else standard_conv,
    )


def _sep_conv(in_chs: int, out_chs: int, kernel_size: Any, stride: Any) -> nn.Module:
    return SeparableConv2d(in_chs, out_chs, kernel_size=kernel_size, stride=stride)


BlockBuilder = Callable[[int, Any, Any, BuildContext], nn.Module]
BLOCK_BUILDERS: dict[str, BlockBuilder] = {
    "conv": _conv_block,
    "ds": _ds_block,
    "ir": _ir_block,
    "uib": _uib_block,
    "fused": _fused_block,
    "mqa": _mqa_block,
    "convnext": _convnext_block,
    "ghost": _ghost_block,
    "shuffle": _shuffle_block,
    "rep": _rep_block,
    "repvit": _repvit_block,
    "maxpool": _pool_block,
    "xception": _xception_block,
}
"""Stage ``type`` -> function building one block; the stride applies to a stage's first block."""


def _build_stage(spec: Any, in_chs: int, ctx: BuildContext, repeats: int,
                 drop_paths: Sequence[float] = ()) -> tuple[list[nn.Module], int, tuple[int, int]]:
    """``repeats`` blocks of a stage, block i with stochastic depth ``drop_paths[i]``."""
    blocks: list[nn.Module] = []
    ctx = replace(ctx, act=spec.act or ctx.act)
    for i in range(repeats):
        rate = drop_paths[i] if drop_paths else 0.0
        block = BLOCK_BUILDERS[spec.type](in_chs, spec, spec.stride if i == 0 else 1, replace(ctx, drop_path=rate, index=i))
        blocks.append(block)
        in_chs = block.out_chs
    if spec.dropout > 0:
        blocks.append(nn.Dropout(spec.dropout))
    return blocks, in_chs, pair(spec.stride)


def check_input(x: torch.Tensor, in_chans: int, min_size: tuple[int, int], name: str) -> None:
    """Raise ``TypeError``/``ValueError`` naming the expected type, rank, dtype, channels or
    minimum size (TorchScript-able)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor (batch, {in_chans}, H, W), got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"expected a floating-point input (e.g. torch.float32), got {x.dtype}; convert with x.float()")
    if x.dim() != 4:
        raise ValueError(f"expected a 4-D input (batch, {in_chans}, H, W), got {x.dim()} dimensions")
    if x.shape[1] != in_chans:
        raise ValueError(f"expected {in_chans} input channels (in_chans={in_chans}), got {x.shape[1]}")
    if x.shape[2] < min_size[0] or x.shape[3] < min_size[1]:
        raise ValueError(
            f"input {x.shape[2]}x{x.shape[3]} is smaller than the minimum {min_size[0]}x{min_size[1]} for {name}"
        )


def norm_factory(cfg: ModelConfig) -> Optional[Callable[[int], nn.Module]]:
    """``channels -> norm module`` for the config's ``norm`` (BatchNorm with its eps and momentum,
    LayerNorm over channels with its eps), None for ``type: none``."""
    if cfg.norm.type == "none":
        return None
    if cfg.norm.type == "batchnorm":
        return partial(nn.BatchNorm2d, eps=cfg.norm.eps, momentum=cfg.norm.momentum)
    return partial(NORMS[cfg.norm.type], eps=cfg.norm.eps)


def first_conv_name(model: nn.Module) -> str:
    """The module path of ``model``'s first conv (timm's ``pretrained_cfg["first_conv"]``: the one
    a checkpoint for another number of input channels adapts); "" for a network without one."""
    return next((name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)), "")


def head_as_linear(head: nn.Module) -> None:
    """The head conv computed as a Linear on the pooled features (``PooledLinear``); its
    parameters are kept."""
    conv = head.conv
    conv.__class__ = PooledLinear  # the same nn.Conv2d state, another forward


def _use_tf_same_padding(model: nn.Module) -> None:
    """Every strided conv of ``model`` with symmetric padding becomes a ``Conv2dSame``: TensorFlow's
    "same" padding from the input size (at stride 1 an odd kernel's symmetric padding is the
    same thing, so those stay)."""
    for parent in list(model.modules()):
        for name, conv in list(parent.named_children()):
            if type(conv) is nn.Conv2d and max(conv.stride) > 1 and conv.padding != (0, 0):
                same = Conv2dSame(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=0,
                                  dilation=conv.dilation, groups=conv.groups, bias=conv.bias is not None)
                setattr(parent, name, same)


def _drop_row_padding(model: nn.Module) -> None:
    """No conv of ``model`` pads rows any more (``row_padding: none``); columns keep their padding."""
    for conv in model.modules():
        if isinstance(conv, Conv2dSame):
            conv.pad_rows = False
        elif isinstance(conv, nn.Conv2d):
            conv.padding = (0, conv.padding[1])


class _DeferredDefaultInit(TorchFunctionMode):
    """While a ZooNet is built: PyTorch initialises each Conv2d and Linear as it is made
    (``kaiming_uniform_``, ``uniform_``), and ``ZooNet._init_weights`` then draws all of them
    again. In this mode those calls are recorded, not run; ``finish`` runs the ones whose tensor
    ``_init_weights`` did not draw (a block's layer of another kind), so nothing is left unset."""

    DEFERRED = (nn.init.kaiming_uniform_, nn.init.uniform_)

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001 (PyTorch's signature)
        kwargs = kwargs or {}
        if func in self.DEFERRED:
            self.calls.append((func, args, kwargs))
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)

    def finish(self, model: nn.Module) -> None:
        drawn = {id(p) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                 for p in m.parameters(recurse=False)}
        with torch.no_grad():
            for func, args, kwargs in self.calls:
                if id(args[0] if args else kwargs["tensor"]) not in drawn:
                    func(*args, **kwargs)
        self.calls.clear()


class ZooNet(nn.Module):
    """A network built from a ``ModelConfig``, with timm's model interface.

    ``forward_features`` -> ``forward_head`` (global pool, dropout, Linear); logits out.
    """

    __jit_unused_properties__ = ["default_cfg"]

    def __init__(self, cfg: ModelConfig, allow_large: bool = False) -> None:
        """Build ``cfg``; unless ``allow_large``, first refuse (``ModelTooLargeError``) a config
        whose closed-form size exceeds ``dszoo.plan``'s limits, before allocating anything."""
        super().__init__()
        with _DeferredDefaultInit() as deferred:  # its first draw would be half the cost of building
            self._build(cfg, allow_large)
        if not any(p.is_meta for p in self.parameters()):  # meta tensors hold no values to draw (half the cost there)
            self._init_weights()
            deferred.finish(self)

    def _build(self, cfg: ModelConfig, allow_large: bool) -> None:
        plan = None if allow_large else plan_model(cfg)
        if plan is not None:
            check_model_size(plan)
        self.cfg = cfg
        norm = norm_factory(cfg)
        ctx = BuildContext(norm, cfg.act, cfg.separable, cfg.width_mult, cfg.channel_divisor,
                           cfg.channel_round_limit, cfg.se, layer_scale=cfg.layer_scale,
                           reparameterized=cfg.reparameterized)
        self.in_chans = cfg.in_chans
        declared = cfg.min_input_size or (1, 1)
        smallest = plan.min_input_size if plan is not None else min_input_size(cfg)
        self.min_input_size: tuple[int, int] = (max(declared[0], smallest[0]), max(declared[1], smallest[1]))
        self.model_name = cfg.name
        self.grad_checkpointing = False

        chs, red_h, red_w = cfg.in_chans, 1, 1
        points: list[tuple[str, int, int]] = []  # (module, channels, reduction) after each stage
        # before the stem, outside its numbering: weights load with and without it
        self.input_norm: Optional[nn.Module] = CepstralMeanNorm() if cfg.input_norm == "cepstral_mean" else None
        stem: list[nn.Module] = []
        for spec in cfg.stem:
            layers, chs, (sh, sw) = _build_stage(spec, chs, ctx, spec.repeat)
            stem += layers
            red_h, red_w = red_h * sh, red_w * sw
        self.stem = nn.Sequential(*stem)
        points.append(("stem", chs, max(red_h, red_w)))
        stages: list[nn.Module] = []
        rates = drop_path_rates(cfg)
        for i, (spec, repeats) in enumerate(zip(cfg.stages, cfg.stage_repeats())):
            layers, chs, (sh, sw) = _build_stage(spec, chs, ctx, repeats, rates[i])
            stages.append(nn.Sequential(*layers))
            red_h, red_w = red_h * sh, red_w * sw
            points.append((f"stages.{i}", chs, max(red_h, red_w)))
        self.stages = nn.Sequential(*stages)
        # timm's convention: one feature map per reduction, the last one at that reduction.
        self.feature_info: list[dict[str, Any]] = [
            dict(num_chs=c, reduction=r, module=m)
            for k, (m, c, r) in enumerate(points)
            if k == len(points) - 1 or points[k + 1][2] != r
        ]
        self.global_pool = nn.AdaptiveAvgPool2d(1) if cfg.head.pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.pooled_norm: nn.Module = norm(chs) if cfg.head.norm and norm is not None else nn.Identity()
        head = cfg.head.conv
        self.head_conv: nn.Module = nn.Identity() if head is None else ConvNormAct(
            chs, head.out, 1, padding=0, bias=head.bias, norm=norm if head.norm else None, act=head.act)
        # a BatchNorm on pooled features cannot train on one image
        self.head_norm = (((head is not None and head.norm) or cfg.head.norm) and cfg.norm.type == "batchnorm"
                          or cfg.head.classifier == "norm_linear" and not cfg.reparameterized)
        if head is not None and head.op == "linear":
            head_as_linear(self.head_conv)
        self.num_features = chs if head is None else head.out
        self.head_drop = nn.Dropout(cfg.head.dropout)
        self.num_classes = cfg.num_classes
        self.classifier: nn.Module = self._make_classifier(cfg.num_classes)
        self.pretrained_cfg = self._pretrained_cfg((red_h, red_w))
        if cfg.padding == "tf_same":
            _use_tf_same_padding(self)
        if cfg.row_padding == "none":
            _drop_row_padding(self)

    def _make_classifier(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        if self.cfg.head.classifier == "norm_linear":
            return NormLinearClassifier(self.num_features, num_classes, distilled=self.cfg.head.distilled,
                                        eps=self.cfg.norm.eps, inference=self.cfg.reparameterized)
        return nn.Linear(self.num_features, num_classes)

    def _pretrained_cfg(self, reduction: tuple[int, int]) -> dict[str, Any]:
        p = self.cfg.pretrained_cfg
        c, h, w = self.cfg.input_size
        mean, std = tuple(p.mean), tuple(p.std)
        if len(mean) != c:  # e.g. a 3-channel recipe on 1-channel input: average the channels
            mean, std = (sum(mean) / len(mean),) * c, (sum(std) / len(std),) * c
        return dict(
            architecture=self.cfg.name,
            input_size=(c, h, w),
            min_input_size=(c, *self.min_input_size),
            fixed_input_size=False,
            mean=mean,
            std=std,
            crop_pct=p.crop_pct,
            crop_mode="center",
            interpolation=p.interpolation,
            num_classes=self.cfg.num_classes,
            pool_size=(-(-h // reduction[0]), -(-w // reduction[1])),
            first_conv=first_conv_name(self),
            classifier="classifier",
        )

    @property
    def default_cfg(self) -> dict[str, Any]:
        """Older timm name of ``pretrained_cfg``."""
        return self.pretrained_cfg

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # then a block's own rule, where it has one
            if callable(getattr(m, "init_weights", None)):
                m.init_weights()

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        """Replace the Linear head (``num_classes=0`` removes it: features out)."""
        if global_pool is not None:
            if global_pool not in ("avg", "max"):
                raise ValueError(f"global_pool must be 'avg' or 'max', got {global_pool!r}")
            self.global_pool = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        self.num_classes = num_classes
        # the config describes the network as it now is (checkpoints save it, and rebuild from it)
        head = self.cfg.head if global_pool is None else self.cfg.head.model_copy(update={"pool": global_pool})
        self.cfg = self.cfg.model_copy(update={"num_classes": num_classes, "head": head})
        self.classifier = self._make_classifier(num_classes)
        for linear in self.classifier.modules():
            if isinstance(linear, nn.Linear):
                nn.init.normal_(linear.weight, 0.0, 0.01)
                nn.init.zeros_(linear.bias)
        self.pretrained_cfg = {**self.pretrained_cfg, "num_classes": num_classes}

    def check_input(self, x: torch.Tensor) -> None:
        """Raise ``TypeError``/``ValueError`` naming what was expected for a wrongly typed or
        shaped input."""
        check_input(x, self.in_chans, self.min_input_size, self.model_name)
        if not torch.jit.is_scripting() and not torch.compiler.is_compiling():
            self._check_dtype(x)
        if self.training and self.head_norm and x.shape[0] == 1:
            raise ValueError(f"{self.model_name} normalises its pooled features (a BatchNorm in its head): in "
                             "training mode it needs a batch of at least 2 images, got 1; call model.eval() to "
                             "run one image")

    @torch.jit.unused
    def _check_dtype(self, x: torch.Tensor) -> None:
        """A float input of another precision than the weights (float64 into a float32 model)
        would fail deep inside a conv; say so here. Under ``torch.autocast`` any float input
        is cast for us."""
        weight = next(self.parameters(), None)
        if weight is None or x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type):
            return
        raise TypeError(f"expected a {str(weight.dtype).removeprefix('torch.')} input, the dtype of the model's weights, "
                        f"got {str(x.dtype).removeprefix('torch.')}; convert the input with x.to({weight.dtype}) or "
                        f"the model with model.to({x.dtype})")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        if self.input_norm is not None:
            x = self.input_norm(x)
        if torch.jit.is_scripting():
            return self.stages(self.stem(x))
        x = run_sequence(self.stem, x)
        if self.grad_checkpointing and self.training:
            return self._checkpointed_stages(x)
        return run_sequence(self.stages, x)

    @torch.jit.unused
    def _checkpointed_stages(self, x: torch.Tensor) -> torch.Tensor:
        from timm.models import checkpoint_seq

        return checkpoint_seq(self.stages, x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of keeping them
        (timm's ``checkpoint_seq``): less memory in training, the same gradients."""
        self.grad_checkpointing = enable

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups for layer-wise learning-rate decay (timm's ``group_parameters``):
        the stem, then each block (each stage when ``coarse``), the head conv last."""
        return {"stem": r"^input_norm|^stem", "blocks": [(r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)", None),
                                                         (r"^head_conv", (99999,))]}

    def no_weight_decay(self) -> set[str]:
        """Parameters that weight decay should leave alone: BatchNorm scales and shifts and biases
        (what timm's optimizer factory also excludes by shape)."""
        return {name for name, param in self.named_parameters() if param.ndim <= 1}

    @torch.jit.unused
    def forward_intermediates(self, x: torch.Tensor, indices: Union[int, list[int], None] = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False,
                              ) -> Union[list[torch.Tensor], tuple[torch.Tensor, list[torch.Tensor]]]:
        """timm's ``forward_intermediates``: the feature maps of ``feature_info`` levels
        ``indices`` (an int: the last that many; default all), and the final features unless
        ``intermediates_only``; ``stop_early`` skips the stages after the last map asked for.
        ``norm`` has no effect (these networks have no final norm)."""
        from timm.models._features import feature_take_indices

        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt {output_fmt!r}: these networks give NCHW maps only")
        take, last = feature_take_indices(len(self.feature_info), indices)
        wanted = {self.feature_info[i]["module"] for i in take}
        stop_after = -1 if self.feature_info[last]["module"] == "stem" else int(self.feature_info[last]["module"].split(".")[1])
        self.check_input(x)
        if self.input_norm is not None:
            x = self.input_norm(x)
        x = self.stem(x)
        out = [x] if "stem" in wanted else []
        for i, stage in enumerate(self.stages):
            if stop_early and i > stop_after:
                break
            x = stage(x)
            if f"stages.{i}" in wanted:
                out.append(x)
        if intermediates_only:
            return out
        return x, out

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool, the pooled features' norm and head conv (where the config has them), dropout and
        the classifier (not with ``pre_logits``). Where nothing watches module calls
        (``calls_unwatched``), eager calls step past the ``inert`` layers."""
        if torch.jit.is_scripting():
            x = self.head_drop(torch.flatten(self.head_conv(self.pooled_norm(self.global_pool(x))), 1))
        elif not calls_unwatched(x):
            x = self.head_drop(torch.flatten(self.head_conv(self.pooled_norm(self.global_pool(x))), 1))
        else:
            layers = self._modules
            x = layers["global_pool"](x)
            for name in ("pooled_norm", "head_conv"):
                if not inert(layers[name]):
                    x = layers[name](x)
            x = torch.flatten(x, 1)
            if not inert(layers["head_drop"]):
                x = layers["head_drop"](x)
        return x if pre_logits else self.classifier(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_model(cfg: ModelConfig, allow_large: bool = False) -> ZooNet:
    """Build the network a validated config describes (see ``ZooNet`` for ``allow_large``)."""
    return ZooNet(cfg, allow_large)


class ZooFeatures(nn.Module):
    """Backbone returning the feature maps of ``feature_info`` at ``out_indices`` (timm's
    ``features_only``, with timm's ``FeatureInfo``). Stages after the last requested map are
    dropped."""

    def __init__(self, model: ZooNet, out_indices: Sequence[int] = (0, 1, 2, 3, 4)) -> None:
        super().__init__()
        levels = len(model.feature_info)
        picked: list[int] = []
        for i in out_indices:
            if not isinstance(i, int) or not -levels <= i < levels:
                raise ValueError(
                    f"out_indices {tuple(out_indices)} invalid for {model.cfg.name}: it has {levels} feature "
                    f"levels, use indices 0..{levels - 1} (or -{levels}..-1)"
                )
            picked.append(i % levels)
        if len(set(picked)) != len(picked) or not picked:
            raise ValueError(f"out_indices must be distinct and non-empty, got {tuple(out_indices)}")
        # timm's features_only class: every level's info, with channels(), reduction() and
        # module_name() giving those of the returned maps (timm imported here, as in
        # blocks.create_drop_path, to keep it out of ``import dszoo``)
        from timm.models import FeatureInfo
        self.feature_info = FeatureInfo(copy.deepcopy(model.feature_info), tuple(sorted(picked)))
        names = self.feature_info.module_name()
        # part 0 is the stem, part k the (k-1)-th stage
        self.out_parts: list[int] = [0 if n == "stem" else int(n.split(".")[1]) + 1 for n in names]
        last = max(self.out_parts)
        self.input_norm = model.input_norm
        self.parts = nn.ModuleList([model.stem, *list(model.stages)[:last]])
        self.in_chans = model.in_chans
        self.min_input_size = model.min_input_size
        self.model_name = model.model_name
        self.pretrained_cfg = model.pretrained_cfg
        self.cfg = model.cfg

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.in_chans, self.min_input_size, self.model_name)
        if self.input_norm is not None:
            x = self.input_norm(x)
        out: list[torch.Tensor] = []
        for i, part in enumerate(self.parts):
            x = part(x)
            if i in self.out_parts:
                out.append(x)
        return out
