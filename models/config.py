"""Config schema (pydantic), YAML loading and merging: base + variant + call overrides.

A family file (``configs/<family>.yaml``) has ``family``, ``defaults`` and ``variants``; a
variant is a mapping merged over ``defaults`` (mappings merge key by key, lists are replaced).
A user's own file may be a family file or a flat model config. Every problem is reported at
once in one ``ConfigError`` naming the file, the key path and the bad value.
"""
from __future__ import annotations

import copy
import difflib
import math
import reprlib
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping, Optional, Union

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator,
                      model_validator)

from .blocks import ACTIVATIONS, NORMS

from .files import FileKindError, regular_file

__all__ = [
    "ConfigError",
    "ConvStage",
    "DSStage",
    "HeadConfig",
    "HeadConv",
    "FusedStage",
    "IRStage",
    "MQAStage",
    "UIBStage",
    "SEConfig",
    "ModelConfig",
    "NormConfig",
    "OVERRIDE_KEYS",
    "XceptionStage",
    "close_matches",
    "short_repr",
    "config_json_schema",
    "load_family_file",
    "merge_config",
    "config_source",
]


MAX_CONFIG_BYTES = 1_000_000
"""A config file larger than this is refused unread (the zoo's own are under 5 kB)."""


class ConfigError(ValueError):
    """An invalid model config: every problem, each as ``source: key.path: message``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{source}: {p}" for p in problems]
        super().__init__(lines[0] if len(lines) == 1 else f"{len(lines)} problems:\n  " + "\n  ".join(lines))


def close_matches(name: str, choices: list[str] | tuple[str, ...], n: int = 3) -> list[str]:
    """Close spellings of ``name`` among ``choices`` (for "did you mean")."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_repr(value: Any) -> str:
    """A bounded ``repr``: a hostile file's value (a billion laughs, a cycle) never floods a message."""
    return _REPR.repr(value)


def _did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    matches = close_matches(name, choices)
    return f"; did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""


MAX_INT = 2**31 - 1  # any count above this is a typo, and torch's int32 kernels would reject it
MAX_REPEAT = 1000  # blocks per stage and convs per Xception unit: bounds the work of checking a config
PosInt = Annotated[int, Field(strict=True, gt=0, le=MAX_INT)]
Stride = Union[Literal[1, 2], tuple[Literal[1, 2], Literal[1, 2]]]
ConvStride = Union[Literal[1, 2, 4], tuple[Literal[1, 2, 4], Literal[1, 2, 4]]]
"""A plain conv may also stride by 4: ConvNeXt's 4x4 "patchify" stem."""
Kernel = Union[PosInt, tuple[PosInt, PosInt]]
# Floats are strict (ints allowed, not bools or strings) and finite (no .inf or .nan).
Fraction = Annotated[float, Field(strict=True, ge=0.0, lt=1.0)]
PosFloat = Annotated[float, Field(strict=True, gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NormConfig(_Strict):
    """Normalisation after each conv (``type: none`` removes it)."""

    type: str = "batchnorm"
    eps: PosFloat = 1e-5
    momentum: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.1

    @field_validator("type")
    @classmethod
    def _known_norm(cls, v: str) -> str:
        allowed = [*NORMS, "none"]
        if v not in allowed:
            raise ValueError(f"unknown norm {v!r}; allowed: {', '.join(allowed)}{_did_you_mean(v, allowed)}")
        return v


def _known_activation(v: Optional[str]) -> Optional[str]:
    if v is not None and v not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {v!r}; allowed: {', '.join(sorted(ACTIVATIONS))}{_did_you_mean(v, list(ACTIVATIONS))}")
    return v


Activation = Annotated[str, AfterValidator(_known_activation)]
WidthRule = Literal["scaled", "fixed", "at_least"]
"""How ``width_mult`` reaches a stage's ``out``: scaled and rounded (``make_divisible``), left as
written (EfficientNet-Lite's stem and head), or scaled but never below it (MobileNetV2's head)."""


class _Stage(_Strict):
    out: PosInt
    repeat: Annotated[int, Field(strict=True, gt=0, le=MAX_REPEAT)] = 1
    stride: Stride = 1
    kernel: Kernel = 3
    dropout: Fraction = 0.0
    act: Optional[Activation] = None  # this stage's activation (default: the model's ``act``)
    width: WidthRule = "scaled"
    scale_depth: StrictBool = True  # whether ``depth_mult`` scales ``repeat`` (stages only, not the stem)
    same_stage: StrictBool = False
    """This row continues the previous row's stage (a paper's stage written as several rows, e.g.
    MobileNetV3's three rows of 80 channels): ``depth_mult`` scales the stage's total and timm
    numbers its blocks as one stage."""


class ConvStage(_Stage):
    """``repeat`` x standard conv -> norm -> act. The stride applies to the first one."""

    type: Literal["conv"] = "conv"
    stride: ConvStride = 1
    padding: Union[Literal["same", "valid"], Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]] = "same"
    dilation: PosInt = 1
    skip: StrictBool = False  # add the input when stride 1, "same" padding and the channels match (EfficientNetV2)
    bias: StrictBool = False  # a bias on the conv (ConvNeXt's patchify stem)


class DSStage(_Stage):
    """``repeat`` x MobileNet depthwise-separable conv (dw, norm, act, [SE], pw, norm, act)."""

    type: Literal["ds"]
    depth_multiplier: PosInt = 1
    dilation: PosInt = 1
    mid_norm_act: StrictBool = True
    se_ratio: Fraction = 0.0  # squeeze-excite after the dw conv (``ModelConfig.se`` says how)
    pw_act: StrictBool = True  # False: a linear pointwise conv (the second generation's first stage)
    skip: StrictBool = False  # add the input when stride 1 and the channels match


Groups = Annotated[int, Field(strict=True, gt=0, le=64)]


class IRStage(_Stage):
    """``repeat`` x inverted residual: 1x1 expand by ``expand``, dw, [SE], linear 1x1 project.
    MixNet's (Tan & Le 2019): ``kernels`` lists the depthwise conv's kernel sizes, one per channel
    group (MixConv; instead of ``kernel``), ``expand_groups`` / ``project_groups`` split the 1x1
    convs into that many groups of channels."""

    type: Literal["ir"]
    expand: Annotated[float, Field(strict=True, gt=0, le=100)] = 6.0
    dilation: PosInt = 1
    se_ratio: Fraction = 0.0
    skip: StrictBool = True
    kernels: Optional[Annotated[tuple[PosInt, ...], Field(min_length=1, max_length=16)]] = None
    expand_groups: Groups = 1
    project_groups: Groups = 1


NonNegInt = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]


class UIBStage(_Stage):
    """``repeat`` x MobileNetV4 universal inverted bottleneck: [dw ``start_kernel``], 1x1 expand by
    ``expand``, [dw ``kernel``], [SE], linear 1x1 project, [dw ``end_kernel``]; a kernel of 0
    leaves that depthwise conv out (ExtraDW: start and kernel; ConvNeXt-like: start only;
    inverted bottleneck: kernel only; FFN: none)."""

    type: Literal["uib"]
    start_kernel: NonNegInt = 0
    kernel: NonNegInt = 3
    end_kernel: NonNegInt = 0
    expand: Annotated[float, Field(strict=True, gt=0, le=100)] = 4.0
    se_ratio: Fraction = 0.0
    skip: StrictBool = True

    @model_validator(mode="after")
    def _strided_needs_a_depthwise_conv(self) -> "UIBStage":
        if self.stride not in (1, (1, 1)) and not (self.start_kernel or self.kernel or self.end_kernel):
            raise ValueError(f"stride {self.stride} needs a depthwise conv to take it: start_kernel, kernel or "
                             "end_kernel must be above 0")
        return self


class FusedStage(_Stage):
    """``repeat`` x fused inverted residual (Fused-MBConv, FusedIB): a ``kernel`` x ``kernel``
    full conv expanding by ``expand``, [SE], linear 1x1 project."""

    type: Literal["fused"]
    expand: Annotated[float, Field(strict=True, gt=0, le=100)] = 4.0
    dilation: PosInt = 1
    se_ratio: Fraction = 0.0
    skip: StrictBool = True


class MQAStage(_Stage):
    """``repeat`` x MobileNetV4 Mobile MQA block: norm, multi-query attention of ``heads`` heads
    of ``key_dim`` channels, keys and values on a map downsampled by a ``kernel`` x ``kernel``
    depthwise conv of stride ``kv_stride``; the block itself keeps the map's size."""

    type: Literal["mqa"]
    stride: Literal[1] = 1
    heads: Annotated[int, Field(strict=True, gt=0, le=1024)] = 8
    key_dim: Annotated[int, Field(strict=True, gt=0, le=4096)] = 64
    kv_stride: Literal[1, 2] = 1
    skip: StrictBool = True


class ConvNeXtStage(_Stage):
    """``repeat`` x ConvNeXt block: depthwise ``kernel`` conv, norm, 1x1 conv to ``expand`` x ``out``,
    act, 1x1 conv back, layer scale (the model's ``layer_scale``), residual; where the stride or the
    width changes, the first block starts with norm and a conv of kernel and stride ``stride``."""

    type: Literal["convnext"]
    kernel: Kernel = 7
    expand: Annotated[float, Field(strict=True, gt=0, le=100)] = 4.0


class GhostStage(_Stage):
    """``repeat`` x GhostNet bottleneck: a ghost module expanding to ``mid`` channels (written as
    the paper's table does, scaled by ``width_mult`` like ``out``), a depthwise ``kernel`` conv
    where the stride is above 1, [SE], a ghost module projecting to ``out``, a residual."""

    type: Literal["ghost"]
    mid: PosInt
    se_ratio: Fraction = 0.0
    attention: StrictBool = False  # GhostNetV2's DFC attention on the expanding ghost module
    rep: StrictBool = False
    """RepGhostNet's modules (Chen et al. 2022): the ghost features added, not concatenated, by a
    reparameterisable depthwise conv (``blocks.GhostModule``)."""
    rep_branches: Annotated[int, Field(strict=True, ge=0, le=16)] = 0
    """GhostNetV3's modules (Liu et al. 2024): their 1x1 and cheap depthwise convs, and the strided
    depthwise conv, reparameterisable with this many conv branches each (its networks: 3)."""

    @model_validator(mode="after")
    def _one_kind_of_module(self) -> "GhostStage":
        if self.rep and self.attention:
            raise ValueError("rep and attention: RepGhost's modules take no DFC attention (no network has both)")
        if self.rep and self.rep_branches:
            raise ValueError("rep and rep_branches: RepGhost's modules add the ghost features, GhostNetV3's "
                             "concatenate them; a row has one kind")
        return self


class ShuffleStage(_Stage):
    """``repeat`` x ShuffleNetV2 unit: half the channels through 1x1, depthwise ``kernel``, 1x1, the
    other half kept (stride 1) or through depthwise ``kernel``, 1x1 (stride 2), then a channel
    shuffle. ``out`` must be even; a stage's first unit changes the width only with stride 2."""

    type: Literal["shuffle"]
    out: Annotated[int, Field(strict=True, gt=0, le=MAX_INT, multiple_of=2)]


class RepStage(_Stage):
    """``repeat`` x reparameterisable conv (MobileOne, RepVGG): ``branches`` ``kernel`` x ``kernel``
    conv + norm branches, a 1x1 conv + norm branch (``scale_branch``) and a norm of the input where
    the shape is kept, summed, then [SE] and act; ``separable: true`` makes each block MobileOne's
    pair, a depthwise one then a pointwise one. ``dszoo.reparameterize`` folds each into one conv."""

    type: Literal["rep"]
    branches: Annotated[int, Field(strict=True, gt=0, le=64)] = 1
    scale_branch: StrictBool = True
    separable: StrictBool = False
    se_ratio: Fraction = 0.0


class RepViTStage(_Stage):
    """``repeat`` x RepViT block (Wang et al. 2024, Figure 3): a RepVGG-style depthwise ``kernel``
    conv (its 1x1 and identity branches beside it), squeeze-excite on the row's first, third, ...
    block when ``se_ratio`` is set (the paper's cross-block SE), a 1x1 MLP of ``expand`` x the
    width with a residual. A row's first block with a stride or a new width is the downsampling
    block (a stride-1 block, a depthwise conv of the stride, a 1x1 conv to ``out``, an MLP).
    ``mixer_norm``: ``after_sum`` (one norm after the three branches; timm's M0.9-M2.3) or
    ``per_branch`` (the 1x1 branch with its own norm; the first release, M1/M2/M3)."""

    type: Literal["repvit"]
    expand: Annotated[float, Field(strict=True, gt=0, le=100)] = 2.0
    se_ratio: Fraction = 0.0
    mixer_norm: Literal["after_sum", "per_branch"] = "after_sum"


class PoolStage(_Stage):
    """A ``kernel`` x ``kernel`` max pool of ``stride`` with "same" padding (ShuffleNetV2's stem);
    it keeps the channels, so it has no ``out``."""

    type: Literal["maxpool"]
    out: None = None
    stride: Stride = 2


class XceptionStage(_Stage):
    """``repeat`` x Xception residual unit of ``convs`` separable convs."""

    type: Literal["xception"]
    stride: Literal[1, 2] = 1
    convs: Annotated[int, Field(strict=True, gt=0, le=MAX_REPEAT)] = 2
    start_with_act: StrictBool = True
    grow_first: StrictBool = True


StageConfig = Annotated[Union[ConvStage, DSStage, IRStage, UIBStage, FusedStage, MQAStage, ConvNeXtStage, GhostStage,
                              ShuffleStage, RepStage, RepViTStage, PoolStage, XceptionStage], Field(discriminator="type")]
StemConfig = Annotated[Union[ConvStage, RepStage, PoolStage], Field(discriminator="type")]
STEM_TYPES = ("conv", "rep", "maxpool")


class HeadConv(_Strict):
    """A 1x1 conv on the pooled features (MobileNetV3, Howard et al. 2019, section 5.3: the
    efficient last stage), with a bias and no norm; ``out`` is not scaled by ``width_mult``."""

    out: PosInt
    act: Activation = "hard_swish"
    bias: StrictBool = True
    norm: StrictBool = False  # a norm between the conv and its activation (MobileNetV4)
    op: Literal["conv", "linear"] = "conv"
    """How the same weights are applied: a 1x1 conv (timm), or a Linear on the pooled features
    (torchvision, whose logits differ from the conv's in the last float bits)."""


class HeadConfig(_Strict):
    """Global pool -> dropout -> Linear."""

    pool: Literal["avg", "max"] = "avg"
    norm: StrictBool = False  # the model's norm on the pooled features (ConvNeXt's head LayerNorm)
    dropout: Fraction = 0.0
    conv: Optional[HeadConv] = None  # MobileNetV3: a 1x1 conv after the pool, before the dropout
    classifier: Literal["linear", "norm_linear"] = "linear"
    """The last layer: a Linear, or a BatchNorm then a Linear (RepViT's ``NormLinear``)."""
    distilled: StrictBool = False
    """Two classifiers whose logits are averaged (DeiT's distillation head; RepViT)."""


class SEConfig(_Strict):
    """How a stage's ``se_ratio`` becomes a squeeze-excite: reduced channels ``ratio`` x the
    block's input (``of: input``: SENet, MnasNet, EfficientNet) or of its expanded channels
    (``expanded``: MobileNetV3), rounded half to even, or with ``make_divisible(.., divisor)``;
    the activation between the two 1x1 convs (default: the block's) and the gate."""

    of: Literal["input", "expanded"] = "input"
    divisor: Optional[PosInt] = None
    act: Optional[Activation] = None
    gate: Literal["sigmoid", "hard_sigmoid"] = "sigmoid"
    round_limit: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.9  # make_divisible's, with ``divisor``


class PretrainedConfig(_Strict):
    """Preprocessing the weights expect (timm's ``pretrained_cfg`` fields)."""

    mean: Annotated[tuple[Annotated[float, Field(strict=True)], ...], Field(min_length=1)] = (0.485, 0.456, 0.406)
    std: Annotated[tuple[PosFloat, ...], Field(min_length=1)] = (0.229, 0.224, 0.225)
    crop_pct: Annotated[float, Field(strict=True, gt=0, le=1)] = 0.875
    interpolation: Literal["bilinear", "bicubic", "nearest"] = "bilinear"


class ModelConfig(_Strict):
    """One fully resolved, validated and immutable model config."""

    name: str
    family: str
    paper: str = ""
    timm_name: Optional[str] = None  # timm's name for this network, whose weights pretrained=True loads
    torchvision_name: Optional[str] = None  # torchvision's builder of the same network (its weights load too)
    padding: Literal["symmetric", "tf_same"] = "symmetric"
    """Strided convs with odd kernels: PyTorch's symmetric padding, or TensorFlow's "same" (more
    at the bottom and right, from the input size at run time), which timm's ``tf_`` ports need."""
    bundled_weights: Optional[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+\.safetensors$")]] = None
    """A file shipped in ``dszoo.pretrained`` that ``pretrained=True`` loads (before timm's)."""
    input_norm: Literal["none", "cepstral_mean"] = "none"
    """``cepstral_mean``: the input less its mean over rows first (``blocks.CepstralMeanNorm``, module
    ``input_norm``, no weights); for MFCCs it removes a voice's constant spectral envelope."""
    row_padding: Literal["same", "none"] = "same"
    """``none``: convolutions do not pad rows (the time axis of MFCC input), so each output row
    reads the input rows under it alone and the network runs on a stream a row at a time, its
    state carried between rows (``dszoo.audio.streaming``); conv and ds rows without
    squeeze-excite or skips, no input normalisation."""
    input_size: tuple[PosInt, PosInt, PosInt] = (3, 224, 224)
    min_input_size: Optional[tuple[PosInt, PosInt]] = None
    num_classes: Annotated[int, Field(strict=True, ge=0, le=MAX_INT)] = 1000
    width_mult: Annotated[float, Field(strict=True, gt=0, le=100)] = 1.0
    depth_mult: Annotated[float, Field(strict=True, gt=0, le=100)] = 1.0  # repeats x this, rounded up
    depth_rounding: Literal["ceil", "round"] = "ceil"
    """How a stage's scaled depth becomes an int: up (EfficientNet) or to nearest, at least 1 (TinyNet)."""
    channel_divisor: PosInt = 8
    channel_round_limit: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.9  # make_divisible's (timm's)
    drop_path_rate: Fraction = 0.0  # stochastic depth of the last block; block i of n gets rate x i / n
    layer_scale: Optional[PosFloat] = None
    """Initial value of a learned per-channel scale on the residual branch of ``uib``, ``mqa`` and
    ``convnext`` blocks (MobileNetV4's hybrids: 1e-5; ConvNeXt: 1e-6); ``null``: none."""
    se: SEConfig = SEConfig()
    separable: StrictBool = True
    reparameterized: StrictBool = False
    """Each ``rep`` block in its inference form, one conv with a bias (``dszoo.reparameterize``
    sets it; a checkpoint of that form rebuilds it)."""
    act: str = "relu"
    norm: NormConfig = NormConfig()
    stem: tuple[StemConfig, ...]
    stages: tuple[StageConfig, ...]
    head: HeadConfig = HeadConfig()
    pretrained_cfg: PretrainedConfig = PretrainedConfig()

    @field_validator("act")
    @classmethod
    def _known_act(cls, v: str) -> str:
        return _known_activation(v)

    @model_validator(mode="after")
    def _streamable_rows(self) -> "ModelConfig":
        """``row_padding: none`` keeps every layer row-local: nothing that mixes the rows of a
        window (a per-window input norm, squeeze-excite's pooling) or needs equal sizes on two
        paths (a skip)."""
        if self.row_padding == "same":
            return self
        if self.input_norm != "none":
            raise ValueError(f"row_padding none: input_norm {self.input_norm} normalises over a window's rows; use none")
        for where, rows in (("stem", self.stem), ("stages", self.stages)):
            for i, row in enumerate(rows):
                if row.type not in ("conv", "ds") or getattr(row, "se_ratio", 0) or getattr(row, "skip", False):
                    raise ValueError(f"row_padding none: {where}[{i}] ({row.type}) is not row-local; a streamable "
                                     "network has conv rows and ds rows without se_ratio or skip")
        return self

    @field_validator("stem", mode="before")
    @classmethod
    def _stem_as_list(cls, v: Any) -> Any:
        """One row or a list; a row without ``type`` is a conv."""
        rows = [v] if isinstance(v, Mapping) else v
        if isinstance(rows, (list, tuple)):
            return [{"type": "conv", **row} if isinstance(row, Mapping) and "type" not in row else row for row in rows]
        return rows

    @property
    def in_chans(self) -> int:
        return self.input_size[0]

    def stage_repeats(self) -> list[int]:
        """Blocks of each row of ``stages``: a stage's (its rows joined by ``same_stage``) total
        ``repeat`` x ``depth_mult``, rounded by ``depth_rounding`` (EfficientNet, Tan & Le 2019,
        eq. 3, as its code rounds), then shared out over its rows from the last, in proportion
        (timm's ``_scale_stage_depth``); rows with ``scale_depth: false`` keep their ``repeat``."""
        groups: list[list[int]] = []
        for i, spec in enumerate(self.stages):
            if spec.same_stage and groups and spec.scale_depth and self.stages[groups[-1][-1]].scale_depth:
                groups[-1].append(i)
            else:
                groups.append([i])
        out = [spec.repeat for spec in self.stages]
        for group in groups:
            if not self.stages[group[0]].scale_depth or self.depth_mult == 1.0:
                continue
            total = sum(out[i] for i in group)
            scaled = max(1, round(total * self.depth_mult)) if self.depth_rounding == "round" else \
                math.ceil(total * self.depth_mult)
            for i in reversed(group):
                share = max(1, round(out[i] / total * scaled))
                total, scaled, out[i] = total - out[i], scaled - share, share
        return out


# create_model keywords that are not top-level config keys, and the paths they set.
OVERRIDE_KEYS = {"in_chans": "input_size[0]", "drop_rate": "head.dropout"}
STAGE_CLASSES: dict[str, type[BaseModel]] = {
    "conv": ConvStage, "ds": DSStage, "ir": IRStage, "uib": UIBStage, "fused": FusedStage, "mqa": MQAStage,
    "convnext": ConvNeXtStage, "ghost": GhostStage, "shuffle": ShuffleStage, "rep": RepStage, "repvit": RepViTStage,
    "maxpool": PoolStage, "xception": XceptionStage}
STAGE_TYPES = tuple(STAGE_CLASSES)  # in the order error messages list them


def _known_fields(loc: tuple) -> list[str]:
    """Field names allowed where ``loc`` points (for "did you mean" on unknown keys)."""
    model: Optional[type[BaseModel]] = ModelConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in STAGE_CLASSES:
            model = STAGE_CLASSES[part]
        elif model is ModelConfig and part in ("stem", "stages"):
            model = None  # the discriminator tag that follows names the class
        elif model is not None:
            field = model.model_fields.get(part)
            ann = field.annotation if field else None
            model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return list(model.model_fields) if model is not None else []


def _format_loc(loc: tuple) -> str:
    out = ""
    prev_int = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_int = True
            continue
        if prev_int and part in STAGE_TYPES:
            prev_int = False
            continue  # pydantic's discriminator tag, not a key the user wrote
        if str(part).startswith(("tuple[", "literal[", "constrained-int")):
            continue  # names of union branches (e.g. the int-or-pair stride), not keys
        out += f".{part}" if out else str(part)
        prev_int = False
    return out or "<top level>"


def _problems(err: ValidationError) -> list[str]:
    seen: dict[str, str] = {}
    for e in err.errors():
        loc = e["loc"]
        path = _format_loc(loc)
        kind = e["type"]
        value = e.get("input")
        if kind == "extra_forbidden":
            key = str(loc[-1])
            allowed = _known_fields(loc)
            msg = f"unknown key{_did_you_mean(key, allowed) or ''}"
            if allowed:
                msg += f" (allowed: {', '.join(allowed)})"
        elif kind == "union_tag_invalid":
            tag = e.get("ctx", {}).get("tag", value)
            types = STEM_TYPES if loc[0] == "stem" else STAGE_TYPES
            msg = f"unknown block type {tag!r}; allowed: {', '.join(types)}{_did_you_mean(str(tag), types)}"
            path = f"{path}.type"
        elif kind == "union_tag_not_found":
            msg = f"missing 'type'; allowed: {', '.join(STAGE_TYPES)}"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            text = e["msg"].removeprefix("Value error, ").replace("Input should be", "must be")
            if kind == "literal_error" and path.endswith("stride"):
                text = ("must be 1 or 2" if "xception" in loc else
                        "must be 1, 2 or 4 (or a pair of them)" if "conv" in loc else "must be 1 or 2 (or a pair of them)")
            msg = text if kind == "value_error" else f"{text}, got {short_repr(value)}"
        # Union branches repeat the same problem for one path: keep the first message.
        seen.setdefault(path, msg)
    return [f"{p}: {m}" for p, m in seen.items()]


def config_json_schema() -> dict[str, Any]:
    """JSON Schema of one model config (a flat user YAML), for editors' YAML checking."""
    schema = ModelConfig.model_json_schema()
    schema["properties"].pop("name", None)
    schema["properties"].pop("family", None)
    schema["required"] = [r for r in schema.get("required", []) if r not in ("name", "family")]
    schema["title"] = "dszoo model config"
    return schema


def _key_problems(obj: Any, path: str = "", seen: Optional[set[int]] = None) -> list[str]:
    """Mapping keys that are not strings (YAML allows ``1: x`` or ``null: x``), with their paths."""
    seen = set() if seen is None else seen
    if id(obj) in seen or not isinstance(obj, (Mapping, list, tuple)):
        return []
    seen.add(id(obj))  # shared YAML aliases are walked once
    if isinstance(obj, Mapping):
        out = []
        for key, value in obj.items():
            if isinstance(key, str):
                out += _key_problems(value, f"{path}.{key}" if path else key, seen)
            else:
                out.append(f"{path or '<top level>'}: key {short_repr(key)} must be a string")
        return out
    return [p for i, value in enumerate(obj) for p in _key_problems(value, f"{path}[{i}]", seen)]


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``update`` merged over ``base``; mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: Path) -> Any:
    """``yaml.safe_load`` a file; syntax errors, missing files and anything but a regular file
    of at most ``MAX_CONFIG_BYTES`` (a FIFO or ``/dev/zero`` would never finish reading) become
    ``ConfigError``."""
    try:
        regular_file(path, "config", MAX_CONFIG_BYTES)
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except FileKindError as exc:
        raise ConfigError(str(path), [str(exc).split(f"{path}: ", 1)[-1]]) from None
    except OSError as exc:
        raise ConfigError(str(path), [f"cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), [f"not UTF-8 text: byte {exc.object[exc.start]:#04x} at offset {exc.start}"]) from None
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(str(path), ["invalid YAML: nested too deeply"]) from None
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        pos = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        problem = getattr(exc, "problem", None) or str(exc)
        if isinstance(exc, yaml.reader.ReaderError):  # a control character: its reason, at its offset
            ch = exc.character
            pos, problem = f"offset {exc.position}: ", f"character {f'#x{ch:04x}' if isinstance(ch, int) else repr(ch)}: {exc.reason}"
        raise ConfigError(str(path), [f"invalid YAML: {pos}{' '.join(str(problem).split())}"]) from None


_FAMILY_KEYS = ("family", "description", "defaults", "variants")


def load_family_file(path: Path) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]]]:
    """Read a config file: ``(family, defaults, {variant: overrides})``.

    A flat file (no ``variants``) is one variant named after the file.
    """
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError(str(path), [f"<top level>: must be a mapping, got {type(data).__name__}"])
    if data and not any(str(k) in ModelConfig.model_fields or k in _FAMILY_KEYS for k in data):
        # a file that is no config at all (say /etc/shadow, read as YAML): its keys are its
        # content, and an error must not echo a file that was never a config
        raise ConfigError(str(path), [f"not a dszoo config: none of its {len(data)} top-level keys is a config key "
                                      "(a model has stem and stages, a family file variants); its content is not shown"])
    if "variants" not in data:
        bad = [f"{k}: must be a string, got {short_repr(data[k])}" for k in ("name", "family") if not isinstance(data.get(k, ""), str)]
        if bad:
            raise ConfigError(str(path), bad)
        name = str(data.get("name", path.stem))
        body = {k: v for k, v in data.items() if k not in ("family", "name")}
        return str(data.get("family", name)), body, {name: {}}
    problems = [
        f"{k}: unknown key{_did_you_mean(str(k), _FAMILY_KEYS)} (allowed: {', '.join(_FAMILY_KEYS)})"
        for k in data if k not in _FAMILY_KEYS
    ]
    problems += [f"{k}: must be a string, got {short_repr(data[k])}"
                 for k in ("family", "description") if not isinstance(data.get(k, ""), str)]
    defaults = data.get("defaults") or {}
    variants = data.get("variants") or {}
    if not isinstance(defaults, Mapping):
        problems.append(f"defaults: must be a mapping, got {defaults!r}")
    if not isinstance(variants, Mapping) or not variants:
        problems.append(f"variants: must be a non-empty mapping of name -> overrides, got {variants!r}")
    else:
        problems += [
            f"variants.{n}: must be a mapping, got {v!r}" for n, v in variants.items() if not isinstance(v, (Mapping, type(None)))
        ]
        problems += [f"variants: name {short_repr(n)} must be a string (quote it in the YAML)"
                     for n in variants if not isinstance(n, str)]
    if problems:
        raise ConfigError(str(path), problems)
    family = str(data.get("family", path.stem))
    return family, dict(defaults), {n: dict(v or {}) for n, v in variants.items()}


def _apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any], source: str) -> dict[str, Any]:
    allowed = sorted(set(ModelConfig.model_fields) - {"name", "family"} | set(OVERRIDE_KEYS))
    unknown = [k for k in overrides if k not in allowed]
    if unknown:
        raise ConfigError(
            source,
            [f"{k}: unknown override{_did_you_mean(k, allowed)} (allowed: {', '.join(allowed)})" for k in unknown],
        )
    out = copy.deepcopy(raw)
    size = out.get("input_size", ModelConfig.model_fields["input_size"].default)
    size = list(size) if isinstance(size, (list, tuple)) and len(size) == 3 else size  # junk: the schema reports it
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "drop_rate":
            out = deep_merge(out, {"head": {"dropout": value}})
        elif key == "input_size":
            size = _override_size(size, value, source)
        elif key == "in_chans":
            size = [value, *size[1:]] if isinstance(size, list) else size
        elif isinstance(value, Mapping):
            out = deep_merge(out, {key: value})
        else:
            out[key] = value
    out["input_size"] = size
    return out


def _override_size(size: Any, value: Any, source: str) -> Any:
    """The ``input_size`` override: an int (square), ``(H, W)`` or ``(C, H, W)``."""
    if isinstance(value, (list, tuple)) and len(value) == 3:
        return list(value)
    if isinstance(value, int):
        hw = [value, value]
    elif isinstance(value, (list, tuple)) and len(value) == 2:
        hw = list(value)
    else:
        raise ConfigError(source, [f"input_size: must be an int, (H, W) or (C, H, W), got {short_repr(value)}"])
    return [size[0], *hw] if isinstance(size, list) else size


def config_source(name: str, variant: Mapping[str, Any], overrides: Mapping[str, Any], source: str) -> str:
    """How errors name a config: its file, the variant and any overrides."""
    where = f"{source}: variant {name}" if variant else source
    if overrides:
        where += f" + overrides {short_repr(dict(overrides))}"
    return where


def config_changes(old: Any, new: Any, path: str = "") -> list[str]:
    """Key paths where two config dumps differ, with both values (``stages[1].out: 64 -> 32``)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in config_changes(old.get(k), new.get(k), f"{path}.{k}" if path else str(k))]
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [c for i, (a, b) in enumerate(zip(old, new)) for c in config_changes(a, b, f"{path}[{i}]")]
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


def merge_config(
    name: str,
    family: str,
    defaults: Mapping[str, Any],
    variant: Mapping[str, Any],
    overrides: Mapping[str, Any],
    source: str,
) -> ModelConfig:
    """Merge defaults + variant + overrides and validate the schema, or raise one ``ConfigError``.

    Whether the input is large enough for the network is the plan's to say:
    ``dszoo.plan.resolve_config`` does both.
    """
    where = config_source(name, variant, overrides, source)
    try:
        raw = deep_merge(defaults, variant)
        raw = _apply_overrides(raw, overrides, f"{source} (overrides for {name!r})" if overrides else source)
        raw.update(name=name, family=family)
        problems = _key_problems(raw)
        if problems:
            raise ConfigError(where, problems)
        return ModelConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(where, _problems(err)) from None
    except RecursionError:
        raise ConfigError(where, ["<top level>: nested too deeply"]) from None
