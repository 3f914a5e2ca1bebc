"""Summaries that show what depthwise-separable convolution saves.

``summarize`` returns plain data (per-layer rows, per-stage rows, totals and, on request, the
same network with every separable conv replaced by a standard conv); ``scripts/summarize.py``
only formats it. One forward pass feeds both torchinfo's table and our MAC counts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from ..blocks import ConvNormAct, DepthwiseSeparableConv, LayerScale2d, SeparableConv2d, UniversalInvertedResidual

from ..builder import ZooNet
from ..plan import check_model_size, plan_model
from ..profile import count_params, module_macs
from ..reparameterize import is_reparameterizable, reparameterize, unfoldable_norm
from ..registry import create_model

__all__ = ["CompareRow", "LayerRow", "ModelSummary", "StageRow", "StandardComparison", "summarize"]


@dataclass(frozen=True)
class LayerRow:
    """One Conv2d, Linear or norm layer."""

    name: str
    type: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class StageRow:
    """Totals of one top-level part: the stem, each stage, and the head."""

    name: str
    output_shape: tuple[int, ...]
    params: int
    macs: int


@dataclass(frozen=True)
class CompareRow:
    """One separable conv (or inverted residual, whose depthwise conv becomes standard) against
    what would replace it.

    ``theoretical_ratio`` is MobileNets' eq. 5, ``1/N + 1/K^2`` (times the depth multiplier), for
    a separable conv; NaN for an inverted residual, whose 1x1 convs stay (``mid_chs``: its
    expanded width).
    """

    name: str
    in_chs: int
    out_chs: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    params: int
    macs: int
    standard_params: int
    standard_macs: int
    ratio: float
    theoretical_ratio: float
    mid_chs: Optional[int] = None


@dataclass(frozen=True)
class StandardComparison:
    """The same network with every separable conv a standard conv (``separable=False``)."""

    params: int
    macs: int
    layers: list[CompareRow]


@dataclass(frozen=True)
class ModelSummary:
    """Everything ``scripts/summarize.py`` prints, as plain data."""

    model: str
    input_size: tuple[int, int, int]
    params: int
    trainable_params: int
    macs: int
    torchinfo_mult_adds: int
    output_shape: tuple[int, ...]
    size_mb: float
    size_bytes: dict[str, int]
    """Bytes of the weights per precision: fp32, bf16, and int8 as ``quantize`` stores them (each
    conv and linear weight in int8 with an fp32 scale per output channel, BatchNorm folded into an
    fp32 bias per output channel)."""
    layers: list[LayerRow]
    stages: list[StageRow]
    table: str = field(repr=False, default="")
    standard: Optional[StandardComparison] = None
    deployed_params: Optional[int] = None
    """Parameters of the reparameterised (inference) form, for a model with multi-branch blocks
    (``dszoo.reparameterize``: the count MobileOne's paper quotes); None for others, and for one
    whose branches a LayerNorm follows (it cannot be reparameterised)."""
    deployed_macs: Optional[int] = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the torchinfo text table is left out)."""
        out = asdict(self)
        out.pop("table")
        return out


_MEASURED = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, LayerScale2d)


@torch.no_grad()
def _profile(model: nn.Module, input_size: Sequence[int], depth: int,
             parts: Sequence[str] = ()) -> tuple[list[LayerRow], tuple[int, ...], str, int, dict[str, tuple[int, ...]]]:
    """One forward pass: per-layer rows (hooks), torchinfo's table and mult-adds, and the output
    shape of each module named in ``parts``."""
    import torchinfo  # imported here: only summaries need it

    rows: dict[str, LayerRow] = {}
    part_shapes: dict[str, tuple[int, ...]] = {}
    modules = dict(model.named_modules())

    def part_hook(mod: nn.Module, inp: Any, out: torch.Tensor, name: str) -> None:
        part_shapes.setdefault(name, tuple(out.shape[1:]))

    hooks = [modules[name].register_forward_hook(partial(part_hook, name=name)) for name in parts]
    for name, module in model.named_modules():
        if isinstance(module, _MEASURED):
            def hook(mod: nn.Module, inp: Any, out: torch.Tensor, name: str = name) -> None:
                if name not in rows:  # torchinfo may call twice; count each layer once
                    own = sum(p.numel() for p in mod.parameters(recurse=False))
                    rows[name] = LayerRow(name, type(mod).__name__, tuple(out.shape[1:]), own, module_macs(mod, out))
            hooks.append(module.register_forward_hook(hook))
    try:
        stats = torchinfo.summary(
            model, input_size=(1, *input_size), depth=depth, verbose=0, mode="eval",
            col_names=("output_size", "num_params", "mult_adds"), device="cpu",
        )
    finally:
        for h in hooks:
            h.remove()
    out_shape = tuple(stats.summary_list[0].output_size[1:])
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    layers = sorted(rows.values(), key=lambda r: order[r.name])
    return layers, out_shape, str(stats), int(stats.total_mult_adds), part_shapes


def _stage_parts(model: ZooNet) -> list[tuple[str, str]]:
    """(label, module name) of each top-level part: the stem, every stage and the head (the
    classifier, after MobileNetV3's conv on the pooled features where there is one)."""
    return [("stem", "stem"), *((f"stages.{i}", f"stages.{i}") for i in range(len(model.stages))),
            ("head", "classifier")]


_HEAD_MODULES = ("pooled_norm", "head_conv", "classifier")


def _stage_rows(model: ZooNet, layers: list[LayerRow], shapes: dict[str, tuple[int, ...]]) -> list[StageRow]:
    """Per part: its real output shape (from the forward pass), params and MACs."""
    modules = dict(model.named_modules())
    rows = []
    for label, prefix in _stage_parts(model):
        prefixes = _HEAD_MODULES if label == "head" else (prefix,)
        mine = [r for r in layers if any(r.name == p or r.name.startswith(p + ".") for p in prefixes)]
        params = sum(count_params(modules[p]) for p in prefixes if p in modules)
        rows.append(StageRow(label, shapes[prefix], params, sum(r.macs for r in mine)))
    return rows


def _compare(model: ZooNet, layers: list[LayerRow], std_layers: list[LayerRow], std_model: ZooNet) -> StandardComparison:
    by_name = {r.name: r for r in layers}
    std_by_name = {r.name: r for r in std_layers}
    std_modules = dict(std_model.named_modules())
    rows = []
    for name, module in model.named_modules():
        if not isinstance(module, (DepthwiseSeparableConv, SeparableConv2d, UniversalInvertedResidual)) or \
                name not in std_modules:
            continue
        residual = isinstance(module, UniversalInvertedResidual)
        # a universal inverted bottleneck's first depthwise conv (an FFN form has none: nothing to compare)
        dws = [m.conv for m in (getattr(module, "dw_start", None), module.dw, getattr(module, "dw_end", None))
               if isinstance(m, ConvNormAct)]
        if not dws:
            continue
        dw = dws[0]
        mine = [r for n, r in by_name.items() if n.startswith(name + ".")]
        theirs = [r for n, r in std_by_name.items() if n == name or n.startswith(name + ".")]
        macs, std_macs = sum(r.macs for r in mine), sum(r.macs for r in theirs)
        kh, kw = dw.kernel_size
        rows.append(CompareRow(
            name=name, in_chs=module.in_chs, out_chs=module.out_chs, kernel=(kh, kw), stride=tuple(dw.stride),
            params=count_params(module), macs=macs,
            standard_params=count_params(std_modules[name]), standard_macs=std_macs,
            ratio=macs / std_macs if std_macs else float("nan"),
            theoretical_ratio=float("nan") if residual else module.dw.depth_multiplier * (1 / module.out_chs + 1 / (kh * kw)),
            mid_chs=module.mid_chs if residual else None,
        ))
    return StandardComparison(count_params(std_model), sum(r.macs for r in std_layers), rows)


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of ``model``'s weights in fp32, bf16 and int8 (see ``ModelSummary.size_bytes``)."""
    params = count_params(model)
    quantized = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    int8 = sum(m.weight.numel() + 2 * 4 * m.weight.shape[0] for m in quantized)
    rest = params - sum(m.weight.numel() + (m.bias.numel() if m.bias is not None else 0) for m in quantized)
    rest -= sum(p.numel() for m in model.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for p in m.parameters())
    return {"fp32": 4 * params, "bf16": 2 * params, "int8": int8 + 4 * max(rest, 0)}


def summarize(
    model_or_name: Union[str, ZooNet],
    input_size: Optional[Sequence[int]] = None,
    *,
    depth: int = 3,
    compare_standard: bool = False,
    allow_large: bool = False,
    **overrides: Any,
) -> ModelSummary:
    """Summarise a model (a ``ZooNet`` or a name/YAML path with ``create_model`` overrides).

    Args:
        input_size: (C, H, W) to profile at; the model's default input when ``None``.
        depth: nesting depth of torchinfo's table.
        compare_standard: also profile the network with every separable conv standard.
        allow_large: profile even above the size guard of ``dszoo.plan`` (at ``input_size``).
    """
    model = (model_or_name if isinstance(model_or_name, ZooNet)
             else create_model(model_or_name, allow_large=allow_large, **overrides))
    model.eval()
    size = tuple(input_size) if input_size is not None else tuple(model.cfg.input_size)
    if len(size) != 3:
        raise ValueError(f"input_size must be (C, H, W), got {size}")
    model.check_input(torch.empty(1, *size, device="meta"))
    if not allow_large:
        check_model_size(plan_model(model.cfg, size))  # e.g. a huge --input-size, before any forward pass
    layers, out_shape, table, mult_adds, part_shapes = _profile(
        model, size, depth, [name for _, name in _stage_parts(model)])
    macs = sum(r.macs for r in layers)
    params = count_params(model)
    sizes = weight_bytes(model)
    deployed = None
    if is_reparameterizable(model) and unfoldable_norm(model) is None:  # the inference form; int8 stores it
        deployed = plan_model(model.cfg.model_copy(update={"reparameterized": True}), size)
        sizes["int8"] = weight_bytes(reparameterize(model))["int8"]
    standard = None
    if compare_standard:
        std_model = ZooNet(model.cfg.model_copy(update={"separable": False}), allow_large).eval()
        std_model.reset_classifier(model.num_classes)
        std_layers = _profile(std_model, size, 1)[0]
        standard = _compare(model, layers, std_layers, std_model)
    return ModelSummary(
        model=model.cfg.name,
        input_size=size,  # type: ignore[arg-type]
        params=params,
        trainable_params=count_params(model, trainable_only=True),
        macs=macs,
        torchinfo_mult_adds=mult_adds,
        output_shape=out_shape,
        size_mb=params * 4 / 2**20,
        size_bytes=sizes,
        layers=layers,
        stages=_stage_rows(model, layers, part_shapes),
        table=table,
        standard=standard,
        deployed_params=deployed.params if deployed else None,
        deployed_macs=deployed.macs if deployed else None,
    )
