"""Convolution building blocks: padding rules, norm/activation tables and ``ConvNormAct``.

Padding follows DESIGN.md: odd kernels get the symmetric ``(k - 1) // 2 * dilation`` padding
of PyTorch and timm (needed for weight parity), even kernels get TensorFlow's "same" padding
(the extra row/column at the bottom/right), so that by default ``out = ceil(in / stride)``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules import module as _module_hooks

__all__ = [
    "ACTIVATIONS",
    "calls_unwatched",
    "inert",
    "run_sequence",
    "unhooked",
    "CepstralMeanNorm",
    "LayerNorm2d",
    "MaxPool",
    "MixedConv2d",
    "NORMS",
    "ActLike",
    "NormLike",
    "Conv2dSame",
    "ConvNormAct",
    "DepthwiseConv",
    "PointwiseConv",
    "add_shortcut",
    "create_act",
    "create_conv2d",
    "create_drop_path",
    "create_norm",
    "pair",
    "split_channels",
]

IntPair = Union[int, Sequence[int]]
ActLike = Union[str, Callable[[], nn.Module], None]
NormLike = Union[str, Callable[[int], nn.Module], None]

# Strings map to classes through these explicit tables, never through eval.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "hardswish": lambda: nn.Hardswish(inplace=True),  # MobileNetV3 (Howard et al. 2019, section 5.2)
    "hard_swish": lambda: nn.Hardswish(inplace=True),
    "hard_sigmoid": nn.Hardsigmoid,  # relu6(x + 3) / 6: MobileNetV3's squeeze-excite gate
    "sigmoid": nn.Sigmoid,  # the squeeze-excite gate of SENet, MnasNet and EfficientNet
    "swish": lambda: nn.SiLU(inplace=True),  # EfficientNet's name for SiLU (Ramachandran et al. 2017)
    "gelu": nn.GELU,
    "identity": nn.Identity,
}
class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map (ConvNeXt, Liu et al. 2022, section 2.5: "LN"
    replacing BatchNorm; timm's ``LayerNorm2d``): channels moved last, normalised, moved back."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


NORMS: dict[str, Callable[..., nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "layernorm": LayerNorm2d,
}


def pair(value: IntPair, name: str = "value") -> tuple[int, int]:
    """Return ``(h, w)`` from an int or a 2-sequence of ints."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _close(name: str, choices: Sequence[str]) -> str:
    import difflib

    matches = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


def create_act(act: ActLike) -> nn.Module:
    """Activation module from a name in ``ACTIVATIONS``, a zero-argument callable, or ``None``."""
    if act is None:
        return nn.Identity()
    if isinstance(act, str):
        if act not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {act!r}; allowed: {', '.join(sorted(ACTIVATIONS))}"
                + _close(act, list(ACTIVATIONS))
            )
        return ACTIVATIONS[act]()
    return act()


def create_norm(norm: NormLike, num_features: int) -> nn.Module:
    """Norm module from a name in ``NORMS``, a callable taking the channel count, or ``None``."""
    if norm is None:
        return nn.Identity()
    if isinstance(norm, str):
        if norm not in NORMS:
            raise ValueError(
                f"unknown norm {norm!r}; allowed: {', '.join(sorted(NORMS))}"
                + _close(norm, list(NORMS))
            )
        return NORMS[norm](num_features)
    return norm(num_features)


def create_drop_path(rate: float) -> nn.Module:
    """Stochastic depth on a residual branch (Huang et al. 2016): timm's ``DropPath`` at ``rate``,
    or ``nn.Identity`` at 0. timm is imported here, not with the blocks: importing it also imports
    torchvision's feature extraction and ``torch._dynamo``, which would double ``import dszoo``."""
    if rate <= 0:
        return nn.Identity()
    from timm.layers import DropPath
    return DropPath(rate)


def _tf_same_pad(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "same" padding computed from the input size at run time.

    Used for even kernels, whose "same" padding is asymmetric (more at the bottom/right).
    ``pad_rows`` False pads the columns alone (``row_padding: none``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pad_rows = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = _tf_same_pad(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]) \
            if self.pad_rows else (0, 0)
        left, right = _tf_same_pad(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, [left, right, top, bottom])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class PooledLinear(nn.Conv2d):
    """A 1x1 conv that, on a 1x1 map, is applied as the Linear it equals (``F.linear``): the
    same weights and state dict, computed as torchvision's MobileNetV3 head computes them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (1, 1):
            return super().forward(x)
        return F.linear(x.flatten(1), self.weight.flatten(1), self.bias)[:, :, None, None]


def split_channels(channels: int, parts: int) -> list[int]:
    """``channels`` in ``parts`` equal groups, the remainder to the first (MixNet's split)."""
    split = [channels // parts] * parts
    split[0] += channels - sum(split)
    return split


class MixedConv2d(nn.ModuleDict):
    """MixConv (Tan & Le 2019, "MixConv: Mixed Depthwise Convolutional Kernels", section 3): the
    channels split into one group per kernel size, each group convolved with its own kernel, the
    results concatenated; depthwise, or with 1x1 kernels MixNet's grouped pointwise conv. The
    convs are ``"0"``, ``"1"``, ... as in timm's ``MixedConv2d``."""

    def __init__(self, in_chs: int, out_chs: int, kernel_sizes: Sequence[int], *, stride: IntPair = 1,
                 dilation: IntPair = 1, depthwise: bool = False, bias: bool = False,
                 padding: Union[str, int] = "same") -> None:
        super().__init__()
        if len(kernel_sizes) > min(in_chs, out_chs):
            raise ValueError(f"a mixed conv of {len(kernel_sizes)} channel groups needs at least {len(kernel_sizes)} "
                             f"channels in and out, got {in_chs} -> {out_chs}")
        ins, outs = split_channels(in_chs, len(kernel_sizes)), split_channels(out_chs, len(kernel_sizes))
        for i, (k, c_in, c_out) in enumerate(zip(kernel_sizes, ins, outs)):
            self[str(i)] = create_conv2d(c_in, c_out, k, stride=stride, dilation=dilation,
                                         groups=c_in if depthwise else 1, bias=bias, padding=padding)
        self.splits = ins
        self.starts = [sum(ins[:i]) for i in range(len(ins))]
        self.in_channels, self.out_channels = in_chs, out_chs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # slices, not split(): ExecuTorch plans split's outputs for the traced batch only
        return torch.cat([conv(x.narrow(1, self.starts[i], self.splits[i])) for i, conv in enumerate(self.values())], 1)


def create_conv2d(
    in_chs: int,
    out_chs: int,
    kernel_size: Union[IntPair, list[int]],
    *,
    stride: IntPair = 1,
    dilation: IntPair = 1,
    groups: int = 1,
    bias: bool = False,
    padding: Union[str, int] = "same",
) -> nn.Module:
    """A Conv2d with the project's padding rule; a *list* of kernel sizes makes a ``MixedConv2d``
    (depthwise when ``groups == in_chs``), a tuple is one kernel's (height, width).

    Args:
        padding: ``"same"`` (out = ceil(in / stride)), ``"valid"`` (no padding) or an int.
    """
    if isinstance(kernel_size, list):
        if groups not in (1, in_chs):
            raise ValueError(f"a mixed conv is depthwise (groups = in_chs) or dense (groups 1), got groups {groups}")
        return MixedConv2d(in_chs, out_chs, kernel_size, stride=stride, dilation=dilation,
                           depthwise=groups == in_chs and in_chs > 1, bias=bias, padding=padding)
    kh, kw = pair(kernel_size, "kernel_size")
    sh, sw = pair(stride, "stride")
    dh, dw = pair(dilation, "dilation")
    for name, v in (("in_chs", in_chs), ("out_chs", out_chs), ("groups", groups)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if min(kh, kw, sh, sw, dh, dw) <= 0:
        raise ValueError(
            f"kernel_size, stride and dilation must be positive, got "
            f"{(kh, kw)}, {(sh, sw)}, {(dh, dw)}"
        )
    if in_chs % groups or out_chs % groups:
        raise ValueError(f"in_chs {in_chs} and out_chs {out_chs} must be divisible by groups {groups}")
    common = dict(stride=(sh, sw), dilation=(dh, dw), groups=groups, bias=bias)
    if padding == "valid":
        return nn.Conv2d(in_chs, out_chs, (kh, kw), padding=0, **common)
    if isinstance(padding, int) and not isinstance(padding, bool):
        return nn.Conv2d(in_chs, out_chs, (kh, kw), padding=padding, **common)
    if padding != "same":
        raise ValueError(f"padding must be 'same', 'valid' or an int, got {padding!r}")
    if kh % 2 and kw % 2:
        sym = ((kh - 1) // 2 * dh, (kw - 1) // 2 * dw)
        return nn.Conv2d(in_chs, out_chs, (kh, kw), padding=sym, **common)
    return Conv2dSame(in_chs, out_chs, (kh, kw), padding=0, **common)


class ConvNormAct(nn.Module):
    """conv -> norm -> act, the unit every network here is made of.

    Attributes:
        out_chs: output channels.
        stride: the ``(h, w)`` stride of the conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        kernel_size: IntPair = 3,
        *,
        stride: IntPair = 1,
        dilation: IntPair = 1,
        groups: int = 1,
        bias: bool = False,
        padding: Union[str, int] = "same",
        norm: NormLike = "batchnorm",
        act: ActLike = "relu",
    ) -> None:
        super().__init__()
        self.conv = create_conv2d(
            in_chs, out_chs, kernel_size, stride=stride, dilation=dilation,
            groups=groups, bias=bias, padding=padding,
        )
        self.norm = create_norm(norm, out_chs)
        self.act = create_act(act)
        self.in_chs = in_chs
        self.out_chs = out_chs
        self.stride = pair(stride, "stride")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_norm_act(x)

    def conv_norm_act(self, x: torch.Tensor) -> torch.Tensor:
        """conv -> norm -> act. Where nothing watches module calls (``calls_unwatched``), eager calls
        step past a norm or act that is ``inert`` (absent, or folded away) and call the others'
        ``forward`` unless they have hooks (``unhooked``): a module call costs about a microsecond
        of Python (with ``run_sequence``, 2-4% of ShuffleNetV2 x0.5's time at batch 1). Checked per
        call, so a layer swapped in or hooked later is applied and its hooks fire; hooks, tracers,
        compilers and TorchScript see the plain chain."""
        if torch.jit.is_scripting():  # compiled alone: TorchScript cannot skip the other operand of an `or`
            return self.act(self.norm(self.conv(x)))
        if not calls_unwatched(x):
            return self.act(self.norm(self.conv(x)))
        layers = self._modules
        conv, norm, act = layers["conv"], layers["norm"], layers["act"]
        x = conv.forward(x) if unhooked(conv) else conv(x)
        if not inert(norm):
            x = norm.forward(x) if unhooked(norm) else norm(x)
        if not inert(act):
            x = act.forward(x) if unhooked(act) else act(x)
        return x


def inert(layer: nn.Module) -> bool:
    """Whether calling ``layer`` would give back its input and nothing would see the call: an
    ``nn.Identity``, or an ``nn.Dropout`` in evaluation mode or at rate 0 (those classes, not
    subclasses), without hooks of its own. Eager forwards step past such a layer (a module call
    costs about a microsecond of Python)."""
    kind = type(layer)  # the classes themselves: a subclass may do more in its forward
    if kind is not nn.Identity and not (kind is nn.Dropout and (not layer.training or layer.p == 0)):
        return False
    return not (layer._forward_pre_hooks or layer._forward_hooks)


def calls_unwatched(x: object) -> bool:
    """Whether a module called on ``x`` now could run its ``forward`` directly, unseen: ``x`` is a
    plain tensor (not an FX proxy, nor a fake or other subclass of export and compilers), nothing
    traces or compiles, and no global module hooks are registered. ``Module.__call__`` takes
    this fast path itself, through two more Python frames per call."""
    return (type(x) is torch.Tensor and not torch._C._get_tracing_state() and not torch.compiler.is_compiling()
            and not (_module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks
                     or _module_hooks._global_backward_hooks or _module_hooks._global_backward_pre_hooks))


def unhooked(layer: nn.Module) -> bool:
    """Whether ``layer`` has no hooks of its own, is not compiled (``Module.compile``) and its class
    keeps ``Module.__call__``: its ``forward`` is all a call would run (where ``calls_unwatched``)."""
    return not (layer._forward_hooks or layer._forward_pre_hooks or layer._backward_hooks
                or layer._backward_pre_hooks or layer._compiled_call_impl is not None
                or type(layer).__call__ is not _module_call)


_module_call = nn.Module.__call__


def run_sequence(layers: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layers(x)``; for an ``nn.Sequential`` called where nothing watches (``calls_unwatched``,
    ``unhooked``), each unhooked layer's ``forward`` directly, a nested ``nn.Sequential`` walked
    the same way: the Python of a module call per layer saved, as in ``ConvNormAct``."""
    if type(layers) is not nn.Sequential or not (unhooked(layers) and calls_unwatched(x)):
        return layers(x)
    return _walk_sequence(layers, x)


def _walk_sequence(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    for layer in layers._modules.values():
        if not unhooked(layer):
            x = layer(x)
        elif type(layer) is nn.Sequential:
            x = _walk_sequence(layer, x)
        else:
            x = layer.forward(x)
    return x


def add_shortcut(branch: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``branch + shortcut``, a residual block's sum (He et al. 2016). Where no gradient is
    recorded it is added into ``branch``, the output the block has just made and nothing else
    holds (or a view of it), as timm's and torchvision's blocks do (``x += shortcut``): a fresh
    tensor for each block's sum cost GhostNet's eager inference 7-9% at batch 8, memory no longer
    reused while in cache. While autograd records, or where dtypes or shapes differ (autocast,
    broadcasting), it is a new tensor."""
    if torch.is_grad_enabled() or branch.dtype != shortcut.dtype or branch.shape != shortcut.shape:
        return branch + shortcut
    return branch.add_(shortcut)


class DepthwiseConv(ConvNormAct):
    """Depthwise conv: one ``k x k`` filter per input channel (``groups = in_chs``).

    ``depth_multiplier`` m (the seeds' ``kernels_per_layer``) gives ``in_chs * m`` outputs and
    ``in_chs * m * k_h * k_w`` weights (MobileNets, Howard et al. 2017, section 3.1).
    Norm and activation default to none: a bare depthwise conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int | None = None,
        *,
        depth_multiplier: int = 1,
        kernel_size: IntPair = 3,
        stride: IntPair = 1,
        dilation: IntPair = 1,
        bias: bool = False,
        padding: Union[str, int] = "same",
        norm: NormLike = None,
        act: ActLike = None,
    ) -> None:
        if not isinstance(depth_multiplier, int) or isinstance(depth_multiplier, bool) or depth_multiplier <= 0:
            raise ValueError(f"depth_multiplier must be a positive int, got {depth_multiplier!r}")
        if out_chs is None:
            out_chs = in_chs * depth_multiplier
        elif out_chs != in_chs * depth_multiplier:
            raise ValueError(
                f"a depthwise conv gives in_chs * depth_multiplier = {in_chs * depth_multiplier} "
                f"channels, got out_chs={out_chs}"
            )
        super().__init__(
            in_chs, out_chs, kernel_size, stride=stride, dilation=dilation, groups=in_chs,
            bias=bias, padding=padding, norm=norm, act=act,
        )
        self.depth_multiplier = depth_multiplier


class PointwiseConv(ConvNormAct):
    """1x1 conv mixing channels: always stride 1 and no padding, so the map keeps its size.

    Norm and activation default to none: a bare pointwise conv.
    """

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        *,
        bias: bool = False,
        norm: NormLike = None,
        act: ActLike = None,
    ) -> None:
        super().__init__(in_chs, out_chs, 1, stride=1, bias=bias, padding=0, norm=norm, act=act)


class CepstralMeanNorm(nn.Module):
    """Each input column less its mean over the rows: for MFCCs ``(batch, 1, frames,
    coefficients)``, cepstral mean normalisation (Atal 1974), which removes what stays constant
    through a clip, a voice's or a microphone's spectral envelope. No parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - x.mean(dim=-2, keepdim=True)


class MaxPool(nn.MaxPool2d):
    """A ``k x k`` max pool padded by ``(k - 1) // 2`` (``ceil(n / stride)`` outputs for odd
    kernels), which keeps the channels (ShuffleNetV2's stem, Ma et al. 2018, Table 5)."""

    def __init__(self, channels: int, kernel_size: IntPair = 3, stride: IntPair = 2) -> None:
        kernel = pair(kernel_size, "kernel_size")
        super().__init__(kernel, pair(stride, "stride"), padding=((kernel[0] - 1) // 2, (kernel[1] - 1) // 2))
        self.in_chs = self.out_chs = channels
