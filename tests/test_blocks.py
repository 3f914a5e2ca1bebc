"""Blocks: shapes, the separable-conv cost formulas, and the seeds' mistakes made impossible."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from blocks import (
    ConvNormAct,
    DepthwiseConv,
    DepthwiseSeparableConv,
    InvertedResidual,
    PointwiseConv,
    SeparableConv2d,
    ShuffleUnit,
    XceptionBlock,
    add_shortcut,
    calls_unwatched,
    channel_shuffle,
    create_conv2d,
    inert,
    run_sequence,
    unhooked,
)
from dszoo import count_macs, count_params
from dszoo.profile import layer_traffic

BLOCK_FACTORIES = {
    "ConvNormAct": lambda c, s: ConvNormAct(c, 2 * c, 3, stride=s),
    "ConvNormAct_k4": lambda c, s: ConvNormAct(c, 2 * c, 4, stride=s),
    "ConvNormAct_k10x4": lambda c, s: ConvNormAct(c, 2 * c, (10, 4), stride=s),
    "ConvNormAct_dilated": lambda c, s: ConvNormAct(c, 2 * c, 3, stride=s, dilation=2),
    "DepthwiseConv": lambda c, s: DepthwiseConv(c, stride=s),
    "DepthwiseConv_m2": lambda c, s: DepthwiseConv(c, depth_multiplier=2, stride=s),
    "DepthwiseSeparableConv": lambda c, s: DepthwiseSeparableConv(c, 2 * c, stride=s),
    "DepthwiseSeparableConv_k5": lambda c, s: DepthwiseSeparableConv(c, 2 * c, kernel_size=5, stride=s),
    "SeparableConv2d": lambda c, s: SeparableConv2d(c, 2 * c, stride=s),
    "XceptionBlock": lambda c, s: XceptionBlock(c, 2 * c, stride=s),
    "ShuffleUnit": lambda c, s: ShuffleUnit(c, 2 * c if s > 1 else c, stride=s),
}


@pytest.mark.parametrize("name", sorted(BLOCK_FACTORIES))
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(15, 15), (16, 16), (49, 10), (7, 8)])
def test_output_is_ceil_of_input_over_stride(name: str, stride: int, size: tuple[int, int]) -> None:
    block = BLOCK_FACTORIES[name](4, stride)
    out = block(torch.randn(2, 4, *size))
    assert out.shape[1] == block.out_chs
    assert tuple(out.shape[2:]) == (math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert block.stride == (stride, stride)


def test_tuple_stride_and_kernel() -> None:
    conv = ConvNormAct(1, 8, (10, 4), stride=(2, 1))
    assert tuple(conv(torch.randn(1, 1, 49, 10)).shape) == (1, 8, 25, 10)


def test_even_kernel_pads_like_tensorflow_same() -> None:
    """The extra row/column of "same" padding goes at the bottom/right (TensorFlow's rule)."""
    conv = create_conv2d(1, 3, (10, 4), stride=2)
    x = torch.randn(2, 1, 49, 10)
    # TF: total pad H = (25-1)*2 + 10 - 49 = 9 -> 4 top, 5 bottom; W = (5-1)*2 + 4 - 10 = 2 -> 1, 1
    expected = F.conv2d(F.pad(x, [1, 1, 4, 5]), conv.weight, None, 2)
    torch.testing.assert_close(conv(x), expected)


def test_valid_padding_shrinks_the_map() -> None:
    conv = create_conv2d(3, 8, 3, stride=2, padding="valid")
    assert tuple(conv(torch.randn(1, 3, 299, 299)).shape) == (1, 8, 149, 149)


@pytest.mark.parametrize("c,k,m,o", [(3, 3, 1, 3), (32, 3, 1, 64), (16, 5, 2, 24), (512, 3, 1, 512)])
def test_separable_param_formula(c: int, k: int, m: int, o: int) -> None:
    sep = SeparableConv2d(c, o, kernel_size=k, depth_multiplier=m)
    std = create_conv2d(c, o, k)
    assert count_params(sep) == c * k * k * m + c * m * o
    assert count_params(std) == c * k * k * o


@pytest.mark.parametrize("h,c,k,o", [(14, 512, 3, 512), (112, 32, 3, 64), (9, 7, 5, 3)])
def test_separable_mac_formula(h: int, c: int, k: int, o: int) -> None:
    sep_macs = count_macs(SeparableConv2d(c, o, kernel_size=k), (c, h, h))
    std_macs = count_macs(create_conv2d(c, o, k), (c, h, h))
    assert sep_macs == h * h * c * (k * k + o)
    assert std_macs == h * h * c * k * k * o
    assert sep_macs / std_macs == pytest.approx(1 / o + 1 / k**2)


def test_mobilenets_table3_layer() -> None:
    """MobileNets Table 3: K=3, M=N=512 at 14x14."""
    sep = SeparableConv2d(512, 512)
    std = create_conv2d(512, 512, 3)
    assert count_macs(sep, (512, 14, 14)) == 52_283_392
    assert count_macs(std, (512, 14, 14)) == 462_422_016
    assert count_params(sep) == 266_752
    assert count_params(std) == 2_359_296


@pytest.mark.parametrize("batch", [1, 3])
def test_layer_traffic_is_input_output_and_weights_once(batch: int) -> None:
    """The roofline's bytes: the Table 3 layer moves its input, dw output and pw output once
    each, and its weights once; MACs scale with the batch."""
    traffic = layer_traffic(SeparableConv2d(512, 256, bias=True), (512, 14, 14), batch)
    act = 14 * 14 * 4 * batch  # bytes of one channel of activations
    assert traffic == {
        "dw.conv": (batch * 14 * 14 * 512 * 9, 512 * act + 512 * act + 4 * (512 * 9 + 512)),
        "pw.conv": (batch * 14 * 14 * 512 * 256, 512 * act + 256 * act + 4 * (512 * 256 + 256)),
    }


def test_seed_worked_example_3x3x3() -> None:
    """The blog's example: 3 channels in and out, 3x3: 81 weights standard, 27 + 9 separable."""
    sep = SeparableConv2d(3, 3)
    assert count_params(create_conv2d(3, 3, 3)) == 81
    assert count_params(sep.dw) == 27
    assert count_params(sep.pw) == 9


def test_depth_multiplier_is_kernels_per_layer() -> None:
    dw = DepthwiseConv(8, depth_multiplier=3)
    assert dw.out_chs == 24 and dw.conv.groups == 8
    assert count_params(dw) == 8 * 3 * 9
    assert dw(torch.randn(1, 8, 5, 5)).shape[1] == 24


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_depth_multiplier_must_be_positive_int(bad: object) -> None:
    with pytest.raises(ValueError, match="depth_multiplier must be a positive int"):
        DepthwiseConv(8, depth_multiplier=bad)  # type: ignore[arg-type]


def test_depthwise_out_chs_must_match_multiplier() -> None:
    with pytest.raises(ValueError, match=r"in_chs \* depth_multiplier = 16 channels, got out_chs=12"):
        DepthwiseConv(8, 12, depth_multiplier=2)


# --- the seeds' mistakes, made impossible ------------------------------------------------------

def test_seed002_stride_is_applied_once() -> None:
    """Seed 002 strides both dw and pw; ours strides the depthwise conv only."""
    block = DepthwiseSeparableConv(8, 16, stride=2)
    assert block.dw.conv.stride == (2, 2)
    assert block.pw.conv.stride == (1, 1)
    assert tuple(block(torch.randn(1, 8, 64, 64)).shape) == (1, 16, 32, 32)


def test_seed002_pointwise_is_never_padded() -> None:
    """Seed 002 pads its 1x1 conv, turning 64x64 into 66x66."""
    pw = PointwiseConv(32, 128)
    assert pw.conv.padding == (0, 0) and pw.conv.kernel_size == (1, 1)
    assert tuple(pw(torch.randn(1, 32, 64, 64)).shape) == (1, 128, 64, 64)
    with pytest.raises(TypeError):
        PointwiseConv(32, 128, padding=1)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        PointwiseConv(32, 128, stride=2)  # type: ignore[call-arg]


@pytest.mark.parametrize("block", [DepthwiseConv(32), SeparableConv2d(32, 32), DepthwiseSeparableConv(32, 32)])
def test_seed003_3x3_is_padded(block: nn.Module) -> None:
    """Seed 003 leaves the 3x3 conv unpadded, shrinking the map; ours keeps it."""
    assert tuple(block(torch.randn(1, 32, 64, 64)).shape[2:]) == (64, 64)


def test_seed000_every_block_constructs() -> None:
    """Seed 000 calls super() with the wrong class, so its blocks cannot even be built."""
    for name, factory in BLOCK_FACTORIES.items():
        block = factory(4, 1)
        assert isinstance(block, nn.Module) and count_params(block) > 0, name


# --- norm and activation options ---------------------------------------------------------------

def test_norm_and_act_none_remove_them() -> None:
    block = DepthwiseSeparableConv(4, 8, norm=None, act=None)
    assert not any(isinstance(m, (nn.BatchNorm2d, nn.ReLU)) for m in block.modules())
    x = torch.randn(1, 4, 5, 5)
    assert torch.equal(block(x), block.pw.conv(block.dw.conv(x)))


def test_norm_and_act_accept_callables() -> None:
    block = ConvNormAct(4, 8, norm=lambda c: nn.GroupNorm(2, c), act=nn.Tanh)
    assert isinstance(block.norm, nn.GroupNorm) and isinstance(block.act, nn.Tanh)


def test_a_norm_or_act_set_after_construction_is_applied() -> None:
    block = ConvNormAct(4, 8, norm=None, act=None).eval()
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        block.act = nn.ReLU()
        assert torch.equal(block(x), F.relu(block.conv(x)))
        block.norm = nn.BatchNorm2d(8).eval()
        block.norm.running_mean.fill_(1.0)
        assert torch.equal(block(x), F.relu(block.norm(block.conv(x))))


def test_only_a_layer_that_gives_back_its_input_unseen_is_stepped_past() -> None:
    """inert: an identity, or a dropout that drops nothing (evaluation mode, rate 0), those classes
    themselves, without hooks of their own; a hooked identity norm is called, so its hook fires."""
    assert inert(nn.Identity()) and inert(nn.Dropout(0.5).eval()) and inert(nn.Dropout(0.0).train())
    assert not inert(nn.Dropout(0.5).train()) and not inert(nn.ReLU()) and not inert(nn.Dropout2d(0.0))

    class Shifted(nn.Identity):  # a subclass may do more than give its input back
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    assert not inert(Shifted())
    block = ConvNormAct(4, 8, norm=None, act=None).eval()
    seen = []
    block.norm.register_forward_hook(lambda module, args, out: seen.append(out))
    assert not inert(block.norm)
    with torch.no_grad():
        out = block(torch.randn(1, 4, 5, 5))
    assert len(seen) == 1 and torch.equal(seen[0], out)


class _Probe(nn.Module):
    """Doubles its input where a call on it could skip the module-call machinery, else triples it:
    what a tracer or compiler records shows what ``calls_unwatched`` said while it traced."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if calls_unwatched(x) else x * 3


def _run_watched_by(how: str, x: torch.Tensor) -> torch.Tensor:
    probe = _Probe()
    if how == "eager":
        return probe(x)
    if how == "global hook":
        handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: None)
        try:
            return probe(x)
        finally:
            handle.remove()
    if how == "jit.trace":
        return torch.jit.trace(probe, x, check_trace=False)(x)
    if how == "fx":
        return torch.fx.symbolic_trace(probe)(x)
    if how == "torch.export":
        return torch.export.export(probe, (x,)).module()(x)
    if how == "torch.compile":
        torch._dynamo.reset()
        return torch.compile(probe, backend="eager", fullgraph=True)(x)
    return probe(nn.Parameter(x)).detach()  # a tensor subclass


@pytest.mark.parametrize("how, unwatched", [("eager", True), ("global hook", False), ("jit.trace", False), ("fx", False),
                                            ("torch.export", False), ("torch.compile", False), ("tensor subclass", False)])
def test_only_a_plain_eager_call_with_no_one_watching_is_unwatched(how: str, unwatched: bool) -> None:
    """calls_unwatched: the fast path of Module.__call__ is open to a plain tensor only, with no
    tracer, compiler or global module hook that would see (or record) each layer's call."""
    x = torch.randn(2, 3)
    assert torch.equal(_run_watched_by(how, x), x * (2 if unwatched else 3))


def test_layers_called_directly_still_fire_their_hooks_and_give_the_same_outputs() -> None:
    """ConvNormAct and run_sequence call a layer's forward directly only where it has no hooks
    and nothing watches; a hook added later fires, and a global hook sees every layer called."""
    torch.manual_seed(0)
    inner = nn.Sequential(ConvNormAct(4, 4, 1, padding=0), ConvNormAct(4, 4, 3, groups=4, act=None))
    net = nn.Sequential(ConvNormAct(4, 4, 3), inner, nn.ReLU()).eval()
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        plain = net[2](inner[1].act(inner[1].norm(inner[1].conv(inner[0](net[0](x))))))
        assert torch.equal(run_sequence(net, x), plain)
        seen = []
        inner[1].conv.register_forward_pre_hook(lambda module, args: (args[0] * 0,))
        inner[1].norm.register_forward_hook(lambda module, args, out: seen.append(out))
        zeroed = run_sequence(net, x)
        assert len(seen) == 1 and torch.equal(zeroed, torch.relu(seen[0]))
        assert torch.equal(seen[0], inner[1].norm(torch.zeros_like(seen[0])))
        called = []
        handle = nn.modules.module.register_module_forward_hook(lambda module, args, out: called.append(module))
        try:
            assert torch.equal(run_sequence(net, x), zeroed)
        finally:
            handle.remove()
    assert set(map(id, called)) == set(map(id, net.modules()))


def test_a_sequence_of_another_kind_or_a_layer_with_its_own_call_is_called_as_it_is() -> None:
    """run_sequence walks nn.Sequential itself only (a subclass's own forward is called), and a
    layer whose class overrides ``__call__`` is called through it."""
    class Reversed(nn.Sequential):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in reversed(self):
                x = layer(x)
            return x

    class Negated(nn.Identity):
        def __call__(self, x: torch.Tensor) -> torch.Tensor:
            return -super().__call__(x)

    layers = Reversed(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(run_sequence(layers, x), layers[0](layers[1](layers[2](x))))
        assert torch.equal(run_sequence(nn.Sequential(nn.Sequential(Negated()), nn.ReLU()), x), torch.relu(-x))
    assert not unhooked(Negated()) and unhooked(nn.Identity())


def test_a_residual_sum_is_written_into_the_branch_only_where_nothing_records_it() -> None:
    branch, shortcut = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    expected, shortcut_before = branch + shortcut, shortcut.clone()
    with torch.no_grad():
        out = add_shortcut(branch, shortcut)
    assert out is branch and torch.equal(out, expected) and torch.equal(shortcut, shortcut_before)
    recorded = torch.randn(2, 4, 3, 3, requires_grad=True)
    before = recorded.detach().clone()
    out = add_shortcut(recorded, shortcut)
    out.sum().backward()
    assert out is not recorded and torch.equal(recorded.detach(), before)
    assert torch.equal(recorded.grad, torch.ones_like(recorded))
    with torch.no_grad():  # another dtype or a broadcast: a new tensor, as branch + shortcut gives
        low = branch.to(torch.bfloat16)
        assert add_shortcut(low, shortcut).dtype == torch.float32 and low.dtype == torch.bfloat16
        pooled = torch.randn(2, 4, 1, 1)
        assert torch.equal(add_shortcut(pooled, shortcut), pooled + shortcut) and pooled.shape == (2, 4, 1, 1)


def test_separable_conv2d_has_nothing_between_dw_and_pw() -> None:
    sep = SeparableConv2d(4, 8)
    kinds = [type(m) for m in sep.modules() if not isinstance(m, (nn.Identity, SeparableConv2d))]
    assert all(k not in (nn.BatchNorm2d, nn.ReLU, nn.ReLU6) for k in kinds)


def test_mid_norm_act_false_is_xception_sepconv_bn_relu() -> None:
    block = DepthwiseSeparableConv(4, 8, mid_norm_act=False)
    assert isinstance(block.dw.norm, nn.Identity) and isinstance(block.dw.act, nn.Identity)
    assert isinstance(block.pw.norm, nn.BatchNorm2d) and isinstance(block.pw.act, nn.ReLU)


@pytest.mark.parametrize("kind,value,allowed", [("act", "relu7", "relu6"), ("norm", "batchnrm", "batchnorm")])
def test_unknown_names_suggest_close_matches(kind: str, value: str, allowed: str) -> None:
    label = {"act": "activation", "norm": "norm"}[kind]
    with pytest.raises(ValueError, match=f"unknown {label} '{value}'.*did you mean.*'{allowed}'"):
        ConvNormAct(4, 8, **{kind: value})


def test_xception_block_shortcut_and_input_untouched() -> None:
    entry = XceptionBlock(8, 16, stride=2, start_with_act=True)
    middle = XceptionBlock(16, 16, num_convs=3)
    assert isinstance(entry.shortcut, ConvNormAct) and entry.shortcut.conv.stride == (2, 2)
    assert isinstance(middle.shortcut, nn.Identity)
    x = torch.randn(2, 16, 9, 9)
    x_before = x.clone()
    middle.eval()
    out = middle(x)
    assert torch.equal(x, x_before), "the leading activation must not modify the shortcut's input"
    torch.testing.assert_close(out, middle.body(x_before) + x_before)


@pytest.mark.parametrize("grow_first,expected", [(True, [16, 16]), (False, [8, 16])])
def test_xception_block_grow_first(grow_first: bool, expected: list[int]) -> None:
    block = XceptionBlock(8, 16, grow_first=grow_first)
    outs = [m.out_chs for m in block.body if isinstance(m, SeparableConv2d)]
    assert outs == expected


def test_invalid_conv_arguments_name_the_problem() -> None:
    with pytest.raises(ValueError, match="out_chs must be a positive int, got 0"):
        ConvNormAct(4, 0)
    with pytest.raises(ValueError, match="padding must be 'same', 'valid' or an int"):
        create_conv2d(4, 4, 3, padding="full")


@pytest.mark.parametrize("make", [lambda **kw: DepthwiseSeparableConv(8, 8, skip=True, **kw),
                                  lambda **kw: InvertedResidual(8, 8, 16, **kw)], ids=["ds", "ir"])
def test_stochastic_depth_is_timms_drop_path_on_a_residual_branch_only(make) -> None:
    """``drop_path > 0`` on a block with its skip gives timm's ``DropPath`` at that rate (each
    example's branch dropped or scaled by 1 / keep in training, untouched in evaluation); at 0,
    or where the shape leaves no skip, there is nothing to drop."""
    from timm.layers import DropPath

    block = make(drop_path=0.5)
    assert isinstance(block.drop_path, DropPath) and block.drop_path.drop_prob == 0.5
    assert isinstance(make(drop_path=0.0).drop_path, nn.Identity)
    assert isinstance(make(drop_path=0.5, stride=2).drop_path, nn.Identity)
    torch.manual_seed(0)
    x = torch.randn(64, 8, 6, 6)
    block.eval()
    branch = block.drop_path(x)
    assert torch.equal(branch, x)
    block.train()
    branch = block.drop_path(x)
    kept = branch.flatten(1).abs().sum(1) > 0
    assert 0 < kept.sum() < 64
    assert torch.allclose(branch[kept], 2 * x[kept])


def test_channel_shuffle_interleaves_the_groups_as_shufflenet_does() -> None:
    """Channel g * n + i of ``groups`` groups of n moves to i * groups + g (ShuffleNet, Figure 1);
    the same permutation as torchvision's ``channel_shuffle``."""
    from torchvision.models.shufflenetv2 import channel_shuffle as torchvision_shuffle

    x = torch.arange(12.0).view(1, 12, 1, 1).expand(2, 12, 3, 2).contiguous()
    assert channel_shuffle(x, 2)[0, :, 0, 0].tolist() == [0, 6, 1, 7, 2, 8, 3, 9, 4, 10, 5, 11]
    assert channel_shuffle(x, 3)[0, :, 0, 0].tolist() == [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    y = torch.randn(2, 24, 5, 3)
    assert torch.equal(channel_shuffle(y, 2), torchvision_shuffle(y, 2))


def test_a_shuffle_unit_of_stride_1_passes_half_its_channels_untouched() -> None:
    """ShuffleNetV2, Figure 3 (c): the first half of the input reaches the even output channels
    unchanged; the branch computes the odd ones from the second half alone."""
    unit = ShuffleUnit(16, 16).eval()
    x = torch.randn(2, 16, 6, 6)
    with torch.no_grad():
        out = unit(x)
        changed = x.clone()
        changed[:, :8] += 1.0  # the kept half: the branch's outputs stay
        moved = unit(changed)
    assert torch.equal(out[:, 0::2], x[:, :8])
    assert torch.equal(moved[:, 1::2], out[:, 1::2])
    assert isinstance(unit.shortcut, nn.Identity) and unit.branch[0].in_chs == 8


@pytest.mark.parametrize("make,message", [
    (lambda: ShuffleUnit(8, 9, stride=2), "a shuffle unit splits its output in two halves: out_chs must be even, got 9"),
    (lambda: ShuffleUnit(8, 16), "a shuffle unit of stride 1 keeps its width: in_chs 8 must equal out_chs 16 (the "
                                 "first unit of a wider stage needs stride 2)"),
])
def test_a_shuffle_unit_that_cannot_split_or_keep_its_width_is_refused(make, message: str) -> None:
    with pytest.raises(ValueError) as err:
        make()
    assert str(err.value) == message


def test_layernorm2d_normalises_each_positions_channels_as_timms() -> None:
    """ConvNeXt's LayerNorm on NCHW maps: each pixel's channel vector to mean 0, variance 1, then
    scaled and shifted; the same numbers as timm's LayerNorm2d."""
    from timm.layers import LayerNorm2d as TimmLayerNorm2d

    from blocks import LayerNorm2d

    ours, theirs = LayerNorm2d(6), TimmLayerNorm2d(6)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ours.bias.uniform_(-0.5, 0.5)
    theirs.load_state_dict(ours.state_dict())
    x = 3 + 2 * torch.randn(2, 6, 5, 4)
    y = LayerNorm2d(6)(x)
    assert torch.allclose(y.mean(1), torch.zeros(2, 5, 4), atol=1e-5)
    assert torch.allclose(y.var(1, unbiased=False), torch.ones(2, 5, 4), atol=1e-4)
    assert torch.equal(ours(x), theirs(x))


def test_a_convnext_block_downsamples_only_where_the_stride_or_width_changes() -> None:
    from blocks import ConvNeXtBlock

    kept, wider = ConvNeXtBlock(8, 8, 32), ConvNeXtBlock(8, 16, 64, stride=2)
    assert isinstance(kept.downsample, nn.Identity) and wider.downsample[1].kernel_size == (2, 2)
    assert kept(torch.randn(2, 8, 9, 7)).shape == (2, 8, 9, 7)
    assert wider(torch.randn(2, 8, 9, 7)).shape == (2, 16, 4, 3)  # 2x2 of stride 2, no padding


def test_a_mixed_conv_splits_its_channels_as_timms() -> None:
    """MixConv: channels in equal groups, the remainder to the first, one kernel size each; the same
    numbers as timm's MixedConv2d, depthwise and as MixNet's grouped 1x1 conv."""
    from timm.layers import MixedConv2d as TimmMixedConv2d

    from blocks import MixedConv2d

    mixed = create_conv2d(11, 11, [3, 5, 7], groups=11, stride=2)
    assert isinstance(mixed, MixedConv2d) and [c.in_channels for c in mixed.values()] == [5, 3, 3]
    assert [c.kernel_size for c in mixed.values()] == [(3, 3), (5, 5), (7, 7)] and all(
        c.groups == c.in_channels for c in mixed.values())
    theirs = TimmMixedConv2d(11, 11, [3, 5, 7], stride=2, depthwise=True)
    theirs.load_state_dict(mixed.state_dict())
    x = torch.randn(2, 11, 9, 8)
    assert torch.equal(mixed(x), theirs(x)) and mixed(x).shape == (2, 11, 5, 4)
    grouped = create_conv2d(8, 6, [1, 1])
    assert [(c.in_channels, c.out_channels, c.groups) for c in grouped.values()] == [(4, 3, 1), (4, 3, 1)]
    with pytest.raises(ValueError, match="a mixed conv is depthwise \\(groups = in_chs\\) or dense \\(groups 1\\), got groups 2"):
        create_conv2d(8, 8, [3, 5], groups=2)
