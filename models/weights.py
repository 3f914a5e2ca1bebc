"""Loading and saving weights: our checkpoints and timm's, safely.

timm publishes ImageNet weights for ``mobilenetv1_100`` and ``legacy_xception``; our networks
are the same layer for layer, so a map between module paths (derived from our model, not
hard-coded per width or depth) turns one state dict into the other exactly.
Only ``torch.load(weights_only=True)`` and safetensors are used: no arbitrary unpickling.
"""
from __future__ import annotations

import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union
from urllib.parse import urlparse

import torch
from torch import nn

from .blocks import (ConvNeXtBlock, ConvNormAct, DepthwiseSeparableConv, FusedInvertedResidual, GhostBottleneck, InvertedResidual,
                     MixedConv2d, MobileMultiQueryAttention, MobileOneBlock, RepConv, RepVggDepthwise, RepViTBlock,
                     ResidualConv, SeparableConv2d, UniversalInvertedResidual, XceptionBlock)

from .files import FileKindError, atomic_path, regular_file, write_through_memory
from .builder import ZooNet
from .reparameterize import is_reparameterizable, reparameterize
from .preprocessing import trained_front_end

__all__ = [
    "CheckpointError",
    "SPOTTER_METADATA_KEY",
    "LoadReport",
    "WeightsFile",
    "bundled_weights",
    "cached_timm_weights",
    "check_torch_file",
    "checked_training_checkpoint",
    "export_to_timm",
    "export_to_torchvision",
    "from_timm_state_dict",
    "from_torchvision_state_dict",
    "load_pretrained",
    "measured_weights",
    "read_state_dict",
    "read_weights_file",
    "save_state_dict",
    "spotter_metadata",
    "timm_module_map",
    "weights_front_end",
]

PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint that cannot be read safely or does not fit the model."""


SPOTTER_METADATA_KEY = "dszoo_spotter"
"""The safetensors metadata entry of a keyword spotter file (``dszoo.audio.spot.save_spotter``):
JSON with its model config, class names, MFCC front end, threshold and card."""


# Each of our blocks' modules -> the names timm's EfficientNet builder gives them
# (timm.models._efficientnet_blocks: DepthwiseSeparableConv, InvertedResidual, ConvBnAct,
# UniversalInvertedResidual, EdgeResidual, MobileAttention); a block whose modules timm names as
# we do (the Mobile MQA block) maps each of them to itself.
_SE = {"se.conv_reduce": "se.conv_reduce", "se.conv_expand": "se.conv_expand"}
_EFFICIENTNET_BLOCK_NAMES: dict[type, dict[str, str]] = {
    DepthwiseSeparableConv: {"dw.conv": "conv_dw", "dw.norm": "bn1", **_SE, "pw.conv": "conv_pw", "pw.norm": "bn2"},
    InvertedResidual: {"expand.conv": "conv_pw", "expand.norm": "bn1", "dw.conv": "conv_dw", "dw.norm": "bn2", **_SE,
                       "project.conv": "conv_pwl", "project.norm": "bn3"},
    UniversalInvertedResidual: {"dw_start.conv": "dw_start.conv", "dw_start.norm": "dw_start.bn",
                                "expand.conv": "pw_exp.conv", "expand.norm": "pw_exp.bn", "dw.conv": "dw_mid.conv",
                                "dw.norm": "dw_mid.bn", **_SE, "project.conv": "pw_proj.conv",
                                "project.norm": "pw_proj.bn", "dw_end.conv": "dw_end.conv", "dw_end.norm": "dw_end.bn",
                                "layer_scale": "layer_scale"},
    FusedInvertedResidual: {"expand.conv": "conv_exp", "expand.norm": "bn1", **_SE, "project.conv": "conv_pwl",
                            "project.norm": "bn2"},
    ConvNormAct: {"conv": "conv", "norm": "bn1"},
    ResidualConv: {"conv": "conv", "norm": "bn1"},
    GhostBottleneck: {f"{g}.{part}.{layer}": f"{g}.{theirs}.{index}" for g in ("ghost1", "ghost2")
                      for part, theirs in (("primary", "primary_conv"), ("cheap", "cheap_operation"))
                      for layer, index in (("conv", 0), ("norm", 1))} | {
        "dw.conv": "conv_dw", "dw.norm": "bn_dw", **_SE, "shortcut.0.conv": "shortcut.0", "shortcut.0.norm": "shortcut.1",
        "shortcut.1.conv": "shortcut.2", "shortcut.1.norm": "shortcut.3",
        **{f"ghost1.short.{i}.{layer}": f"ghost1.short_conv.{2 * i + k}" for i in range(3)
           for k, layer in enumerate(("conv", "norm"))}},
    MobileMultiQueryAttention: {},
}
_REP_GHOST = {f"{g}.cheap.{mine}": f"{g}.{theirs}" for g in ("ghost1", "ghost2") for mine, theirs in (
    ("conv_kxk.0.conv", "cheap_operation.0"), ("conv_kxk.0.norm", "cheap_operation.1"), ("identity", "fusion_bn.0"),
    ("reparam_conv", "cheap_operation"))}
"""RepGhostNet's bottleneck beside GhostNet's names: the cheap depthwise conv, its norm, the identity
norm beside them (timm's ``fusion_bn``), or the one conv they fold into."""


def _ghost_v3_names(branches: int) -> dict[str, str]:
    """GhostNetV3's bottleneck beside GhostNet's names: each ``RepConv``'s k x k branches (timm's
    ``*_rpr_conv.i``), 1x1 branch (``*_rpr_scale``) and identity norm (``cheap_rpr_skip``), or the
    one conv they fold into (``primary_conv.0``, ``cheap_operation.0``, ``conv_dw``)."""
    names: dict[str, str] = {}
    for conv, folded in (("ghost1.primary", "ghost1.primary_conv.0"), ("ghost1.cheap", "ghost1.cheap_operation.0"),
                         ("ghost2.primary", "ghost2.primary_conv.0"), ("ghost2.cheap", "ghost2.cheap_operation.0"),
                         ("dw", "conv_dw")):  # timm's names are ours with _rpr_ for the dot
        for i in range(branches):
            names |= {f"{conv}.conv_kxk.{i}.conv": f"{conv}_rpr_conv.{i}.conv",
                      f"{conv}.conv_kxk.{i}.norm": f"{conv}_rpr_conv.{i}.bn1"}
        names |= {f"{conv}.conv_scale.conv": f"{conv}_rpr_scale.conv", f"{conv}.conv_scale.norm": f"{conv}_rpr_scale.bn1",
                  f"{conv}.identity": f"{conv}_rpr_skip", f"{conv}.reparam_conv": folded}
    return names


def _block_names(block: nn.Module) -> dict[str, str]:
    """Our module path inside ``block`` -> timm's, for every module holding tensors (a MixNet
    block's mixed convs: each group's conv, ``.0``, ``.1``, ..., under both names)."""
    names = dict(_EFFICIENTNET_BLOCK_NAMES[type(block)])
    if getattr(block, "rep", False):  # RepGhost modules: their cheap conv is a RepConv
        names = {k: v for k, v in names.items() if ".cheap." not in k} | _REP_GHOST
    if getattr(block, "rep_branches", 0):  # GhostNetV3: its modules and strided depthwise conv are RepConvs
        names = {k: v for k, v in names.items() if not k.startswith(("ghost1.primary.", "ghost1.cheap.", "ghost2.",
                                                                     "dw."))} | _ghost_v3_names(block.rep_branches)
    modules = dict(block.named_modules())
    for mine, theirs in list(names.items()):
        if isinstance(modules.get(mine), MixedConv2d):
            names.update({f"{mine}.{i}": f"{theirs}.{i}" for i in modules[mine].keys()})
    if names:
        return names
    return {name: name for name, module in block.named_modules()
            if name and (list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)))}


def _efficientnet_map(model: ZooNet) -> dict[str, str]:
    """timm's ``EfficientNet`` and ``MobileNetV3`` classes (MobileNetV1/V2/V3/V4, MnasNet,
    EfficientNet and EfficientNetV2 and their relatives): ``conv_stem``/``bn1``, then
    ``blocks.i.j`` numbered by timm's stages, which may group several of our config rows
    (``same_stage``), so blocks are matched in order; a last 1x1 conv stage is timm's
    ``conv_head``/``bn2`` where timm has no conv after the pool, else ``head_conv`` is
    (``conv_head``/``norm_head``)."""
    out = {"conv_stem": "stem.0.conv", "bn1": "stem.0.norm", "classifier": "classifier"}
    blocks = [(f"stages.{i}.{j}", block) for i, stage in enumerate(model.stages) for j, block in enumerate(stage)
              if type(block) in _EFFICIENTNET_BLOCK_NAMES]
    if model.cfg.head.conv is None and blocks and type(blocks[-1][1]) is ConvNormAct:
        last, _ = blocks.pop()
        out.update({"conv_head": f"{last}.conv", "bn2": f"{last}.norm"})
    else:
        out.update({"conv_head": "head_conv.conv", "norm_head": "head_conv.norm"})
    stage_sizes = _timm_stage_sizes(model, len(blocks))
    flat = [(i, j) for i, size in enumerate(stage_sizes) for j in range(size)]
    for (ours, block), (i, j) in zip(blocks, flat):
        out.update({f"blocks.{i}.{j}.{theirs}": f"{ours}.{mine}" for mine, theirs in _block_names(block).items()})
    return out


def _timm_stage_sizes(model: ZooNet, count: int) -> list[int]:
    """How timm groups the first ``count`` blocks into ``blocks.i``: one timm stage per paper
    stage, a config row and the rows after it marked ``same_stage`` (MobileNetV3's rows of 80
    channels are one timm stage)."""
    sizes: list[int] = []
    for spec, repeats in zip(model.cfg.stages, model.cfg.stage_repeats()):
        if spec.same_stage and sizes:
            sizes[-1] += repeats
        else:
            sizes.append(repeats)
    out, left = [], count
    for size in sizes:
        if left <= 0:
            break
        out.append(min(size, left))
        left -= out[-1]
    return out


def _xception_map(model: ZooNet) -> dict[str, str]:
    out = {"conv1": "stem.0.conv", "bn1": "stem.0.norm", "conv2": "stem.1.conv", "bn2": "stem.1.norm", "fc": "classifier"}
    blocks = [(n, m) for n, m in model.named_modules() if isinstance(m, XceptionBlock)]
    for number, (ours, block) in enumerate(blocks, start=1):  # timm numbers blocks 1..12
        theirs = f"block{number}"
        out.update({f"{theirs}.skip": f"{ours}.shortcut.conv", f"{theirs}.skipbn": f"{ours}.shortcut.norm"})
        for k, layer in enumerate(block.body):
            if isinstance(layer, SeparableConv2d):
                out.update({f"{theirs}.rep.{k}.conv1": f"{ours}.body.{k}.dw.conv",
                            f"{theirs}.rep.{k}.pointwise": f"{ours}.body.{k}.pw.conv"})
            elif isinstance(layer, nn.BatchNorm2d):
                out[f"{theirs}.rep.{k}"] = f"{ours}.body.{k}"
    tail = [n for n, m in model.named_modules() if isinstance(m, DepthwiseSeparableConv)]
    for number, ours in enumerate(tail, start=3):  # timm: conv3/bn3, conv4/bn4
        out.update({f"conv{number}.conv1": f"{ours}.dw.conv", f"conv{number}.pointwise": f"{ours}.pw.conv",
                    f"bn{number}": f"{ours}.pw.norm"})
    return out


def _rep_conv_names(ours: str, theirs: str, conv: RepConv) -> dict[str, str]:
    """timm's ``MobileOneBlock`` names for a ``RepConv`` at ``ours`` (timm's at ``theirs``), in
    either form: its branches, or the one conv they fold into."""
    out = {f"{theirs}.{t}": f"{ours}.{o}" for o, t in (("identity", "identity"), ("conv_scale.conv", "conv_scale.conv"),
                                                         ("conv_scale.norm", "conv_scale.bn"),
                                                         ("reparam_conv", "reparam_conv"), ("se.conv_reduce", "attn.fc1"),
                                                         ("se.conv_expand", "attn.fc2"))}
    for i in range(len(conv.conv_kxk)):
        out.update({f"{theirs}.conv_kxk.{i}.conv": f"{ours}.conv_kxk.{i}.conv",
                    f"{theirs}.conv_kxk.{i}.bn": f"{ours}.conv_kxk.{i}.norm"})
    return out


def _byobnet_map(model: ZooNet) -> dict[str, str]:
    """timm's ``ByobNet`` with MobileOne blocks: one ``stem`` block, then ``stages.i.j`` where each
    of our MobileOne blocks is two of timm's (its depthwise half, then its pointwise half), numbered
    by timm's stages (a row and the ``same_stage`` rows after it); the classifier is ``head.fc``."""
    (stem,) = [m for m in model.stem if isinstance(m, RepConv)]
    out = {"head.fc": "classifier", **_rep_conv_names("stem.0", "stem", stem)}
    blocks = [(f"stages.{i}.{j}", block) for i, stage in enumerate(model.stages) for j, block in enumerate(stage)
              if isinstance(block, MobileOneBlock)]
    flat = [(i, j) for i, size in enumerate(_timm_stage_sizes(model, len(blocks))) for j in range(size)]
    for (ours, block), (i, j) in zip(blocks, flat):
        out.update(_rep_conv_names(f"{ours}.dw", f"stages.{i}.{2 * j}", block.dw))
        out.update(_rep_conv_names(f"{ours}.pw", f"stages.{i}.{2 * j + 1}", block.pw))
    return out


def _convnext_map(model: ZooNet) -> dict[str, str]:
    """timm's ``ConvNeXt``: ``stem.0``/``stem.1`` (conv, norm), ``stages.i.downsample`` (which
    leads our stage's first block) and ``stages.i.blocks.j`` (its ``gamma`` a parameter of the block
    itself, our ``layer_scale``), ``head.norm`` and ``head.fc``."""
    out = {"stem.0": "stem.0.conv", "stem.1": "stem.0.norm", "head.norm": "pooled_norm", "head.fc": "classifier"}
    for i, stage in enumerate(model.stages):
        for j, block in enumerate(b for b in stage if isinstance(b, ConvNeXtBlock)):
            ours, theirs = f"stages.{i}.{j}", f"stages.{i}.blocks.{j}"
            if not isinstance(block.downsample, nn.Identity):
                out.update({f"stages.{i}.downsample.0": f"{ours}.downsample.0",
                            f"stages.{i}.downsample.1": f"{ours}.downsample.1"})
            out.update({f"{theirs}.conv_dw": f"{ours}.dw.conv", f"{theirs}.norm": f"{ours}.dw.norm",
                        f"{theirs}.mlp.fc1": f"{ours}.expand.conv", f"{theirs}.mlp.fc2": f"{ours}.project.conv",
                        theirs: f"{ours}.layer_scale"})
    return out


def _repvit_conv_norm(ours: str, theirs: str, folded: bool) -> dict[str, str]:
    """timm's ``ConvNorm`` at ``theirs`` (``c``, ``bn``; after timm's ``fuse`` the conv itself) and
    our ``ConvNormAct`` at ``ours``."""
    return {theirs: f"{ours}.conv"} if folded else {f"{theirs}.c": f"{ours}.conv", f"{theirs}.bn": f"{ours}.norm"}


def _repvit_block_names(ours: str, theirs: str, block: RepViTBlock, folded: bool) -> dict[str, str]:
    """timm's ``RepViTBlock`` / ``RepVitDownsample`` at ``theirs`` and our ``RepViTBlock`` at ``ours``."""
    out = {}
    if block.downsample:
        out.update(_repvit_block_names(f"{ours}.pre_block", f"{theirs}.pre_block", block.pre_block, folded))
        out.update(_repvit_conv_norm(f"{ours}.spatial", f"{theirs}.spatial_downsample", folded))
        out.update(_repvit_conv_norm(f"{ours}.channel", f"{theirs}.channel_downsample", folded))
        mlp = f"{theirs}.ffn"
    else:
        mixer, theirs_mixer = f"{ours}.token_mixer", f"{theirs}.token_mixer"
        if folded:
            out[theirs_mixer] = f"{mixer}.conv.conv"
        elif isinstance(block.token_mixer, RepVggDepthwise):  # (a standard conv in its place has no timm twin)
            out.update(_repvit_conv_norm(f"{mixer}.conv", f"{theirs_mixer}.conv", False))
            if not block.token_mixer.norm_after_sum:
                out.update(_repvit_conv_norm(f"{mixer}.conv1", f"{theirs_mixer}.conv1", False))
            else:
                out.update({f"{theirs_mixer}.conv1": f"{mixer}.conv1", f"{theirs_mixer}.bn": f"{mixer}.norm"})
        out.update({f"{theirs}.se.fc1": f"{ours}.se.conv_reduce", f"{theirs}.se.fc2": f"{ours}.se.conv_expand"})
        mlp = f"{theirs}.channel_mixer"
    for conv in ("conv1", "conv2"):
        out.update(_repvit_conv_norm(f"{ours}.mlp.{conv}", f"{mlp}.{conv}", folded))
    return out


def _repvit_map(model: ZooNet) -> dict[str, str]:
    """timm's ``RepVit``: ``stem.conv1``/``stem.conv2``, then per timm stage (a row and the
    ``same_stage`` rows after it) a ``downsample`` (our strided block) and ``blocks.j``, and the
    classifier ``head.head``/``head.head_dist`` (each ``bn`` and ``l``). In the reparameterised
    form each conv + norm is the one conv timm's ``reparameterize_model`` leaves, the classifier
    one ``head``. Both forms' names are mapped (a file is matched to its form after renaming), the
    model's own form last, so that ``export_to_timm`` gives the names of the form the model is in."""
    blocks = [(f"stages.{i}.{j}", block) for i, stage in enumerate(model.stages) for j, block in enumerate(stage)
              if isinstance(block, RepViTBlock)]
    flat = [(i, j) for i, size in enumerate(_timm_stage_sizes(model, len(blocks))) for j in range(size)]
    out: dict[str, str] = {}
    for folded in (not model.cfg.reparameterized, model.cfg.reparameterized):
        for k, name in enumerate(("conv1", "conv2")):
            if folded:
                out[f"stem.{name}"] = f"stem.{k}.reparam_conv"
            else:
                out.update({f"stem.{name}.c": f"stem.{k}.conv_kxk.0.conv", f"stem.{name}.bn": f"stem.{k}.conv_kxk.0.norm"})
        if folded:
            out["head"] = "classifier.linear"
        else:
            out.update({"head.head.l": "classifier.linear", "head.head.bn": "classifier.norm",
                        "head.head_dist.l": "classifier.linear_dist", "head.head_dist.bn": "classifier.norm_dist"})
        for (ours, block), (i, j) in zip(blocks, flat):
            theirs = f"stages.{i}.downsample" if block.downsample else f"stages.{i}.blocks.{j - (i > 0)}"
            out.update(_repvit_block_names(ours, theirs, block, folded))
    return out


# family -> (timm architecture, a key only that layout has (or one per form), module-path map builder)
TIMM_MODELS: dict[str, tuple[str, Union[str, tuple[str, ...]], Callable[[ZooNet], dict[str, str]]]] = {
    "mobilenet_v1": ("mobilenetv1_100", "conv_stem.weight", _efficientnet_map),
    "mobilenet_v2": ("mobilenetv2_100", "conv_stem.weight", _efficientnet_map),
    "mobilenet_v3": ("mobilenetv3_large_100", "conv_stem.weight", _efficientnet_map),
    "efficientnet": ("efficientnet_b0", "conv_stem.weight", _efficientnet_map),
    "efficientnet_v2": ("efficientnetv2_s", "conv_stem.weight", _efficientnet_map),
    "mobilenet_v4": ("mobilenetv4_conv_small", "conv_stem.weight", _efficientnet_map),
    "mnasnet": ("semnasnet_100", "conv_stem.weight", _efficientnet_map),
    "ghostnet": ("ghostnet_100", "conv_stem.weight", _efficientnet_map),
    "repghostnet": ("repghostnet_100", ("blocks.0.0.ghost1.fusion_bn.0.weight", "blocks.0.0.ghost1.cheap_operation.bias"),
                    _efficientnet_map),
    "mixnet": ("mixnet_s", "conv_stem.weight", _efficientnet_map),
    "xception": ("legacy_xception", "block1.rep.0.conv1.weight", _xception_map),
    "convnext": ("convnext_atto", "stages.0.blocks.0.conv_dw.weight", _convnext_map),
    "mobileone": ("mobileone_s0", ("stem.conv_scale.conv.weight", "stem.reparam_conv.weight"), _byobnet_map),
    "repvit": ("repvit_m0_9", ("stem.conv1.c.weight", "stem.conv1.weight"), _repvit_map),
}


# family -> (torchvision model, a key only its layout has, BatchNorm eps its weights were trained with)
TORCHVISION_MODELS: dict[str, tuple[str, str, float]] = {
    "mobilenet_v2": ("mobilenet_v2", "features.0.0.weight", 1e-5),
    "mobilenet_v3": ("mobilenet_v3_large / mobilenet_v3_small", "features.0.0.weight", 1e-3),
    "efficientnet": ("efficientnet_b0", "features.0.0.weight", 1e-5),
    "mnasnet": ("mnasnet1_0", "layers.0.weight", 1e-5),
    "efficientnet_v2": ("efficientnet_v2_s / efficientnet_v2_m / efficientnet_v2_l", "features.0.0.weight", 1e-3),
    "shufflenet_v2": ("shufflenet_v2_x0_5 / x1_0 / x1_5 / x2_0", "conv1.0.weight", 1e-5),
}


def from_torchvision_state_dict(model: ZooNet, state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """torchvision's keys -> ours. torchvision's modules come in our order (stem, blocks, last
    conv, head), so the tensors are paired in order, and every pair must agree in kind
    (weight, bias, running statistics) and shape; MobileNetV3's first head Linear becomes our 1x1
    head conv. Only the classifier may differ in shape (another ``num_classes``)."""
    ours = list(model.state_dict().items())
    theirs = list(state.items())
    if len(ours) != len(theirs):
        raise CheckpointError(f"{source}: holds {len(theirs)} tensors in torchvision's layout, {model.cfg.name} has "
                              f"{len(ours)}; it is another network")
    out = {}
    for (mine, want), (key, value) in zip(ours, theirs):
        if mine.rpartition(".")[2] != key.rpartition(".")[2]:
            raise CheckpointError(f"{source}: torchvision's {key} does not line up with our {mine}; another network")
        if value.dim() == 2 and want.dim() == 4 and want.shape[2:] == (1, 1):
            value = value[:, :, None, None]  # a Linear on pooled features is a 1x1 conv
        if value.shape != want.shape and not mine.startswith("classifier."):
            raise CheckpointError(f"{source}: torchvision's {key} {tuple(value.shape)} does not fit our {mine} "
                                  f"{tuple(want.shape)}; another width or variant")
        out[mine] = value
    return out


def export_to_torchvision(model: ZooNet) -> dict[str, torch.Tensor]:
    """Our state dict with the keys of torchvision's builder ``model.cfg.torchvision_name``, for
    ``torchvision.models.NAME(num_classes=...).load_state_dict``: the tensors paired in order, as
    ``from_torchvision_state_dict`` pairs them (a head conv becomes torchvision's Linear)."""
    if not model.cfg.torchvision_name:
        raise CheckpointError(f"{model.cfg.name}: torchvision has no builder of this network "
                              f"(torchvision twins: the families {', '.join(sorted(TORCHVISION_MODELS))})")
    import torchvision

    with torch.device("meta"):
        twin = getattr(torchvision.models, model.cfg.torchvision_name)(num_classes=model.num_classes)
    ours, theirs = list(model.state_dict().values()), twin.state_dict()
    if len(ours) != len(theirs):
        raise CheckpointError(f"{model.cfg.name}: {len(ours)} tensors, torchvision's {model.cfg.torchvision_name} "
                              f"{len(theirs)}; the config no longer describes torchvision's network")
    if any(value.numel() != want.numel() for want, value in zip(theirs.values(), ours)):
        raise CheckpointError(f"{model.cfg.name}: its tensors do not fit torchvision's {model.cfg.torchvision_name} "
                              "(another width or variant)")
    return {key: value.reshape(want.shape) for (key, want), value in zip(theirs.items(), ours)}


def _head_as_torchvision(model: ZooNet) -> None:
    """A head conv (MobileNetV3's) applied as torchvision applies it, a Linear, and the config
    saying so, so that its logits are torchvision's to the last bit."""
    head = model.cfg.head
    if head.conv is None or head.conv.op == "linear":
        return
    from .builder import head_as_linear

    head_as_linear(model.head_conv)
    model.cfg = model.cfg.model_copy(update={"head": head.model_copy(update={"conv": head.conv.model_copy(
        update={"op": "linear"})})})


def _set_batchnorm_eps(model: ZooNet, eps: float) -> Optional[str]:
    """Give every BatchNorm of ``model`` (and its config) ``eps``; a note when that changes it."""
    if model.cfg.norm.eps == eps:
        return None
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = eps
    was = model.cfg.norm.eps
    model.cfg = model.cfg.model_copy(update={"norm": model.cfg.norm.model_copy(update={"eps": eps})})
    return f"BatchNorm eps set to {eps:g} (was {was:g}): torchvision trained these weights with it"


def timm_module_map(model: ZooNet) -> dict[str, str]:
    """timm module path -> our module path, for a model whose family has a timm counterpart."""
    if model.cfg.family not in TIMM_MODELS:
        raise CheckpointError(
            f"{model.cfg.name}: no timm counterpart for family {model.cfg.family!r} "
            f"(timm weights load into: {', '.join(TIMM_MODELS)})"
        )
    return TIMM_MODELS[model.cfg.family][2](model)


def _rename(state: Mapping[str, torch.Tensor], mapping: Mapping[str, str]) -> tuple[dict[str, torch.Tensor], list[str]]:
    out, unknown = {}, []
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in mapping:
            out[f"{mapping[module]}.{leaf}"] = value
        else:
            unknown.append(key)
            out[key] = value
    return out, unknown


def from_timm_state_dict(model: ZooNet, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's key names -> ours (keys the map does not know are passed through unchanged)."""
    return _rename(state, timm_module_map(model))[0]


def export_to_timm(model: ZooNet) -> dict[str, torch.Tensor]:
    """Our state dict with timm's key names: ``timm.create_model(arch).load_state_dict(...)``."""
    inverse = {ours: theirs for theirs, ours in timm_module_map(model).items()}
    state, unknown = _rename(model.state_dict(), inverse)
    if unknown:
        raise CheckpointError(f"{model.cfg.name}: no timm name for {', '.join(unknown[:8])}")
    return _in_state_dict_order(state)


def _in_state_dict_order(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state`` in the order ``nn.Module.state_dict`` gives a module's keys: its own parameters and
    buffers before its children's, children in the order they come (timm's ConvNeXt keeps a
    block's ``gamma`` on the block itself, where we keep it in a ``layer_scale`` child)."""
    tree: dict[str, Any] = {}
    for key in state:
        node = tree
        for part in key.split(".")[:-1]:
            node = node.setdefault(part, {})
        node.setdefault("", []).append(key)

    def walk(node: dict[str, Any]) -> list[str]:
        return node.get("", []) + [k for part, child in node.items() if part for k in walk(child)]

    return {key: state[key] for key in walk(tree)}


MAX_PICKLE_BYTES = 16 * 2**20
"""The most a torch file's pickle may inflate to: a training checkpoint of EfficientNet-B3 with
its optimizer state pickles to 171 KB; a 262 KB file whose pickle inflates to 256 MB would
keep the (safe, but slow) unpickler busy for minutes."""


def check_torch_file(path: PathLike) -> None:
    """Refuse, before unpickling, a torch zip file whose pickle declares more than
    ``MAX_PICKLE_BYTES``, and files of other formats (an ONNX model, a ``torch.export``
    program, anything neither a zip archive nor a pickle): ``ValueError`` saying why, for the
    caller to name the file."""
    path = Path(path)
    if path.suffix == ".onnx":
        raise ValueError("an ONNX model, not weights; pass a .pt checkpoint or a .safetensors file")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            if fh.read(1) != b"\x80":  # a pickle's PROTO opcode: torch.save's legacy format starts so
                raise ValueError("neither torch.save's zip archive nor a pickle")
        return
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
    names = [i.filename for i in infos]
    if any(n.endswith("/archive_format") for n in names) and not any(n.endswith("/data.pkl") for n in names):
        raise ValueError("a torch.export program (.pt2), not weights; pass a .pt checkpoint or a .safetensors file")
    for info in infos:
        if info.filename.endswith(".pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise ValueError(f"its pickle {info.filename} declares {info.file_size:,} bytes, more than the "
                             f"{MAX_PICKLE_BYTES // 2**20} MiB a checkpoint needs; refused unread")


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from ``.safetensors``, or ``.pt/.pth/.pth.tar`` with ``weights_only=True``.

    A training checkpoint (a dict holding ``model``, ``state_dict`` or ``state_dict_ema``)
    gives its model weights.
    """
    return _read_weights(path)[0]


def weights_front_end(path: PathLike) -> Optional[str]:
    """The ``MFCC_PRESETS`` name the weights in ``path`` were trained on: a keyword spotter
    file's (``dszoo-eval-speech --save-spotter``) or a speech ``dszoo-train`` checkpoint's
    ``--mfcc``; None for weights that name none (timm's, an image run's)."""
    return _read_weights(path)[1].get("mfcc")


def _class_names(about: Mapping[str, Any]) -> dict[str, Any]:
    """``{"class_names": [...]}`` where a file names its classes as distinct non-empty strings."""
    names = about.get("class_names")
    ok = isinstance(names, list) and names and all(isinstance(n, str) and n for n in names) and \
        len(set(names)) == len(names)
    return {"class_names": list(names)} if ok else {}


def spotter_metadata(path: PathLike) -> Optional[str]:
    """The JSON a keyword spotter file keeps in its safetensors metadata (``SPOTTER_METADATA_KEY``),
    unparsed; None for a safetensors file of weights alone."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return (fh.metadata() or {}).get(SPOTTER_METADATA_KEY)


def _spotter_about(path: Path) -> dict[str, Any]:
    """A keyword spotter file's metadata, parsed (``{}`` if it is weights alone or the metadata is
    no JSON object: a damaged one is ``load_spotter``'s to report)."""
    import json

    try:
        about = json.loads(spotter_metadata(path) or "{}")
    except (ValueError, RecursionError):
        return {}
    return about if isinstance(about, dict) else {}


def _spotter_trained_cfg(about: dict[str, Any], path: Path) -> dict[str, Any]:
    """What a keyword spotter file's metadata (``_spotter_about``) says of the model's input and
    outputs: its front end and class names (``{}`` if it is weights alone)."""
    return {"mfcc": _named_front_end(about, path), **_class_names(about)} if about else {}


def measured_weights(ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """The weights a ``dszoo-train`` checkpoint's figures were measured with, which every later use
    takes (``create_model(pretrained=...)``, ``--pretrained``, ``--eval-only``, export, spotting):
    its EMA's where the run kept one (``--ema`` validates the average, timm's ``ModelEmaV3``),
    else the model's own. Only ``--resume`` reads both."""
    ema = ckpt.get("ema")
    if isinstance(ema, Mapping) and ema:
        return {str(k).removeprefix("module."): v for k, v in ema.items()}
    return ckpt["model"]


def _checkpoint_trained_cfg(obj: object, path: Path) -> dict[str, Any]:
    """The class names of a ``dszoo-train`` checkpoint, and a speech run's front end."""
    if not isinstance(obj, Mapping):
        return {}
    config = obj.get("config")
    speech = isinstance(config, Mapping) and config.get("dataset") == "speech_commands"
    return {**({"mfcc": _named_front_end(obj, path)} if speech else {}), **_class_names(obj)}  # type: ignore[arg-type]


def _named_front_end(about: dict, path: Path) -> str:
    """``trained_front_end`` of a file's metadata; a preset dszoo does not have is a ``CheckpointError``."""
    try:
        return trained_front_end(about, str(path))
    except ValueError as exc:
        raise CheckpointError(str(exc)) from None


CHECKPOINT_FORMAT = "dszoo-train-1"
"""The ``format`` entry of every checkpoint ``dszoo-train`` writes."""

_CHECKPOINT_FIELDS: dict[str, tuple[type, ...]] = {
    "model_name": (str,), "config": (dict,), "epoch": (int,), "model": (dict,), "optimizer": (dict,),
    "scheduler": (dict,), "ema": (dict, type(None)), "best_top1": (int, float), "history": (list,), "rng": (dict,),
}
"""What a training checkpoint holds, field by field (``format`` aside)."""


def checked_training_checkpoint(ckpt: dict[str, Any], path: str, what: str) -> dict[str, Any]:
    """``ckpt`` if it has every field of a training checkpoint, of the right type; else a
    ``CheckpointError`` naming ``what`` (the option that gave it), the file and the field."""
    problems = [f"{key} is missing" if key not in ckpt else
                f"{key} is a {type(ckpt[key]).__name__}, not a {' or '.join(t.__name__ for t in types)}"
                for key, types in _CHECKPOINT_FIELDS.items()
                if key not in ckpt or not isinstance(ckpt[key], types) or isinstance(ckpt[key], bool)]
    rng = ckpt.get("rng")
    if isinstance(rng, dict) and not (isinstance(rng.get("torch"), torch.Tensor) and isinstance(rng.get("python"), list)):
        problems.append("rng must hold a torch state tensor and a python state list")
    if not problems and not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        problems.append("model must map names to tensors")
    if problems:
        raise CheckpointError(f"{what} {path}: a damaged training checkpoint: {'; '.join(problems)}")
    return ckpt


class WeightsFile(NamedTuple):
    """A weights file read once: its tensors (``state``), what it says of the model's input and
    outputs (``trained``: ``mfcc``, ``class_names``, ``pretrained_cfg`` entries) and, for a
    ``dszoo-train`` checkpoint or spotter file, the classes, channels and input size it was
    trained with (``trained_shape``: ``create_model`` overrides; empty for other weights)."""

    path: Path
    state: dict[str, torch.Tensor]
    trained: dict[str, Any]
    trained_shape: dict[str, Any]


def _trained_shape(saved: object) -> dict[str, Any]:
    """``num_classes``, ``in_chans`` and ``input_size`` of a saved model config (a mapping)."""
    if not isinstance(saved, Mapping):
        return {}
    return {k: saved[k] for k in ("num_classes", "in_chans", "input_size") if k in saved}


def read_weights_file(path: PathLike) -> WeightsFile:
    """The weights in ``path`` (``read_state_dict``'s tensors) and what the file says of them,
    from one read; anything unreadable or damaged is a ``CheckpointError`` naming the file."""
    state, trained, shape = _read_weights(path)
    return WeightsFile(Path(path), state, trained, shape)


def _read_weights(path: PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    path = Path(path)
    try:
        regular_file(path, "checkpoint")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint file not found") from None
    except FileKindError as exc:
        raise CheckpointError(str(exc)) from None
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from None
        about = _spotter_about(path)
        return state, _spotter_trained_cfg(about, path), _trained_shape(about.get("model_config"))
    try:
        check_torch_file(path)
    except (ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({exc})") from None
    try:
        with warnings.catch_warnings():  # torch's warnings about a file it then refuses: the error says it
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: refused: the file needs arbitrary pickled objects to load, which is unsafe "
            f"(weights_only=True: {first}); save a plain state dict or safetensors instead"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types on corrupt, truncated or random bytes
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({detail})") from None
    shape: dict[str, Any] = {}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = checked_training_checkpoint(obj, str(path), "pretrained")
        shape = _trained_shape(obj.get("model_config"))
    trained = _checkpoint_trained_cfg(obj, path)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping) and "ema" in obj:  # a dszoo-train run's
        obj = measured_weights(obj)
    elif isinstance(obj, Mapping):
        for key in ("model", "state_dict", "state_dict_ema"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: does not hold a state dict (a mapping of names to tensors)")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}, trained, shape


def _some(keys: list[str], limit: int = 8) -> str:
    more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


class LoadReport(dict):
    """What ``load_pretrained`` did: ``source``, ``head_reset``, ``missing``, ``unexpected`` and
    ``notes`` (what else it changed, such as the BatchNorm eps a torchvision source needs)."""


def tensor_problems(state: Mapping[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> list[str]:
    """What is wrong with the tensors of ``state`` as values for the model tensors ``own``, key by
    key: sparse, meta or other non-dense layouts; a dtype of another kind (an integer, boolean
    or complex tensor where the model holds floats, or the reverse); NaN or infinite values."""
    problems = []
    for key, value in state.items():
        want = own[key]
        if value.layout != torch.strided:
            problems.append(f"{key} is a {str(value.layout).removeprefix('torch.')} tensor, not a dense one")
        elif value.is_meta:
            problems.append(f"{key} is a meta tensor, which holds no values")
        elif value.is_complex() or value.dtype == torch.bool or value.is_floating_point() != want.is_floating_point():
            problems.append(f"{key} is {str(value.dtype).removeprefix('torch.')}, the model holds "
                            f"{str(want.dtype).removeprefix('torch.')}")
        elif value.is_floating_point() and not torch.isfinite(value).all():
            problems.append(f"{key} holds NaN or infinite values")
    return problems


def load_pretrained(model: ZooNet, path: Union[PathLike, WeightsFile], strict: bool = True) -> LoadReport:
    """Load our checkpoint, or a timm or torchvision state dict, into ``model``.

    The source is detected from the keys. A classifier whose shape differs from the model's
    (another ``num_classes``) is dropped and the model keeps its fresh head; that is reported.
    Any other missing, unexpected or mis-shaped key raises ``CheckpointError`` listing the keys
    (with ``strict=False`` missing and unexpected keys are only reported). Weights that name
    the MFCC front end they were trained on (a keyword spotter file, a speech run's checkpoint)
    set ``model.pretrained_cfg["mfcc"]``, the input they expect; a file that names its classes
    sets ``pretrained_cfg["class_names"]`` where its head is kept. ``path`` may be a file
    ``read_weights_file`` has read already (what ``create_model`` does: one read).
    """
    path, state, trained, _ = path if isinstance(path, WeightsFile) else read_weights_file(path)
    source = "dszoo"
    ours = TIMM_MODELS.get(model.cfg.family)

    def holds(marker: Union[str, tuple[str, ...]]) -> bool:
        return any(key in state for key in ((marker,) if isinstance(marker, str) else marker))

    if ours is not None and holds(ours[1]):
        state, source = from_timm_state_dict(model, state), f"timm {model.cfg.timm_name or ours[0]}"
    else:
        markers = [m for _, m, _ in TIMM_MODELS.values()]  # the one fewest families share names them best
        for marker in sorted(dict.fromkeys(markers), key=markers.count):
            if holds(marker):
                archs = " / ".join(a for a, m, _ in TIMM_MODELS.values() if m == marker)
                raise CheckpointError(f"{path}: holds timm {archs} weights, which do not fit {model.cfg.name}")
    notes = []
    vision = TORCHVISION_MODELS.get(model.cfg.family)
    if source == "dszoo" and any(marker in state for _, marker, _ in TORCHVISION_MODELS.values()) \
            and not any(k.startswith(("stem.", "stages.")) for k in state):
        if vision is None or vision[1] not in state:
            raise CheckpointError(f"{path}: holds torchvision weights, which do not fit {model.cfg.name} (torchvision "
                                  f"layouts load into {', '.join(sorted(TORCHVISION_MODELS))})")
        state, source = from_torchvision_state_dict(model, state, str(path)), f"torchvision {vision[0]}"
        notes += [n for n in [_set_batchnorm_eps(model, vision[2])] if n]
        _head_as_torchvision(model)
    notes += [n for n in [_match_reparameterized_form(model, state, path)] if n]
    own = model.state_dict()
    notes += [n for n in [_adapt_first_conv(model, state, own)] if n]
    head = model.pretrained_cfg["classifier"]
    head_keys = [k for k in state if k.startswith(head + ".")]
    linears = [k.removesuffix("weight") for k in head_keys if k.endswith("weight") and state[k].dim() == 2]
    # Another num_classes: Linear(s) over the same features with another number of outputs.
    other_classes = bool(linears) and all(
        state[k + "weight"].shape[1] == model.num_features
        and (k + "bias" not in state or tuple(state[k + "bias"].shape) == (state[k + "weight"].shape[0],))
        for k in linears)
    head_reset = other_classes and (
        any(k in own and own[k].shape != state[k].shape for k in head_keys)
        or not any(k.startswith(head + ".") for k in own)
    )
    if head_reset:
        for k in head_keys:
            state.pop(k)
    missing = [k for k in own if k not in state and not (head_reset and k.startswith(head + "."))]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append(f"shape mismatch: {_some(mismatched)}")
    if strict and missing:
        problems.append(f"missing keys: {_some(missing)}")
    if strict and unexpected:
        problems.append(f"unexpected keys: {_some(unexpected)}")
    problems += tensor_problems({k: v for k, v in state.items() if k in own}, own)
    if problems:
        raise CheckpointError(f"{path} ({source}) does not fit {model.cfg.name}: " + "; ".join(problems))
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    if head_reset or len(trained.get("class_names", ())) != model.num_classes:
        trained.pop("class_names", None)  # the names belong to the head the file had
    model.pretrained_cfg = {**model.pretrained_cfg, **trained}  # the input these weights expect, their classes
    return LoadReport(source=source, head_reset=bool(head_reset), missing=missing, unexpected=unexpected, notes=notes)


def _match_reparameterized_form(model: ZooNet, state: Mapping[str, torch.Tensor], path: PathLike) -> Optional[str]:
    """Weights of the reparameterised (inference) form reparameterise ``model`` to take them, with a
    note; weights of the multi-branch training form cannot go into an already reparameterised one."""
    folded = any(k.endswith(".reparam_conv.weight") for k in state)
    branched = any(".conv_kxk." in k for k in state)
    if folded and not branched and is_reparameterizable(model):
        reparameterize(model, inplace=True)
        return "the file holds the reparameterised (inference) form: the model is reparameterised to take it"
    if branched and model.cfg.reparameterized:
        raise CheckpointError(f"{path}: holds the multi-branch training form, and {model.cfg.name} is reparameterised "
                              "(one conv per block); load it into the model as built, then call dszoo.reparameterize")
    return None


def _adapt_first_conv(model: ZooNet, state: dict[str, torch.Tensor], own: Mapping[str, torch.Tensor]) -> Optional[str]:
    """Weights of a first conv for another number of input channels, made to fit ``model``'s as
    timm does (``adapt_input_conv``: summed to one channel, or repeated and rescaled); a note
    saying so, or None where nothing needed adapting."""
    key = model.pretrained_cfg["first_conv"] + ".weight"
    theirs, mine = state.get(key), own.get(key)
    if theirs is None or mine is None or theirs.dim() != 4 or theirs.shape == mine.shape:
        return None
    if theirs.shape[0] != mine.shape[0] or theirs.shape[2:] != mine.shape[2:]:
        return None  # another width or kernel: the shape check reports it
    from timm.models._manipulate import adapt_input_conv

    state[key] = adapt_input_conv(mine.shape[1], theirs)
    return (f"first conv {key} adapted from {theirs.shape[1]} to {mine.shape[1]} input channels (timm's "
            "adapt_input_conv)")


def bundled_weights(cfg: Any) -> Path:
    """The weights file ``cfg.bundled_weights`` shipped in ``dszoo.pretrained``."""
    from importlib.resources import files

    path = Path(str(files("dszoo.pretrained") / cfg.bundled_weights))
    if not path.is_file():
        raise CheckpointError(f"{cfg.name}: pretrained=True: the package should ship {path} and does not; reinstall "
                              "dszoo, or pass pretrained='FILE'")
    return path


def cached_timm_weights(cfg: Any) -> Path:
    """The weights file timm's ``pretrained=True`` would load for this model, from the local
    caches timm uses (the Hugging Face hub's, then torch.hub's ``checkpoints/``); nothing is
    downloaded. ``CheckpointError`` in one line when the model has no timm weights or they are not
    on this machine, saying how to pass a file instead."""
    if not cfg.timm_name:
        raise CheckpointError(f"{cfg.name}: pretrained=True: timm publishes no weights for this network; pass "
                              f"pretrained='FILE' (a checkpoint of ours or a timm state dict)")
    from timm.models import get_pretrained_cfg

    theirs = get_pretrained_cfg(cfg.timm_name)
    looked = []
    if theirs is not None and theirs.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(theirs.hf_hub_id, filename, cache_dir=constants.HF_HUB_CACHE)
            if isinstance(found, str) and Path(found).is_file():
                return Path(found)
        looked.append(f"{constants.HF_HUB_CACHE} ({theirs.hf_hub_id})")
    if theirs is not None and theirs.url:
        found = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(theirs.url).path).name
        if found.is_file():
            return found
        looked.append(str(found))
    raise CheckpointError(f"{cfg.name}: pretrained=True: timm's {cfg.timm_name} weights are not on this machine "
                          f"(looked in {', '.join(looked) or 'no cache: timm lists no file'}); where there is internet, "
                          f"timm.create_model({cfg.timm_name!r}, pretrained=True) caches them, or pass pretrained='FILE'")


def save_state_dict(model: nn.Module, path: PathLike) -> None:
    """Write ``model``'s weights as safetensors (or ``torch.save`` for other suffixes), atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        if Path(path).suffix == ".safetensors":
            from safetensors.torch import save

            write_through_memory(tmp, lambda fh: fh.write(save(state)))
        else:
            write_through_memory(tmp, lambda fh: torch.save(state, fh))
