"""Property-based tests of the config path: random valid configs build and match their closed
form; mutated configs, random YAML and random bytes give ``ConfigError`` naming the key path.

The number of examples comes from the hypothesis profile (``tests/conftest.py``): ``ci`` by
default, ``pytest --hypothesis-profile=thorough`` for a long run.
"""
from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from hypothesis import reject, given, settings
from hypothesis import strategies as st

from blocks import ACTIVATIONS
from dszoo import (ConfigError, ModelConfig, build_model, count_macs, count_params, create_model, get_model_config,
                    list_models, min_input_size, plan_model)
from dszoo.plan import resolve_config
from dszoo.measurement.summary import summarize

kernels = st.one_of(st.integers(1, 5), st.tuples(st.integers(1, 5), st.integers(1, 5)))
strides = st.one_of(st.sampled_from([1, 2]), st.tuples(st.sampled_from([1, 2]), st.sampled_from([1, 2])))
common = {"repeat": st.integers(1, 2), "dropout": st.sampled_from([0.0, 0.25]),
          "act": st.sampled_from(["relu", "hard_swish", "swish"]), "width": st.sampled_from(["scaled", "fixed", "at_least"]),
          "scale_depth": st.booleans()}

conv_fields = {"kernel": kernels, "stride": st.one_of(strides, st.just(4)), "dilation": st.integers(1, 2),
               "padding": st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 2)), "bias": st.booleans(),
               **common}
stem_stages = st.fixed_dictionaries({"out": st.integers(1, 16)}, optional={"type": st.just("conv"), **conv_fields})
conv_stages = st.fixed_dictionaries({"type": st.just("conv"), "out": st.integers(1, 16)}, optional=conv_fields)
ds_stages = st.fixed_dictionaries(
    {"type": st.just("ds"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": strides, "dilation": st.integers(1, 2),
              "depth_multiplier": st.integers(1, 2), "mid_norm_act": st.booleans(),
              "se_ratio": st.sampled_from([0.0, 0.25, 0.5]), "pw_act": st.booleans(), "skip": st.booleans(), **common},
)
ir_stages = st.fixed_dictionaries(
    {"type": st.just("ir"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": strides, "dilation": st.integers(1, 2),
              "expand": st.sampled_from([1, 2.5, 3.67, 6]), "se_ratio": st.sampled_from([0.0, 0.25]),
              "kernels": st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=3),
              "expand_groups": st.integers(1, 3), "project_groups": st.integers(1, 3),
              "skip": st.booleans(), **common},
)
xception_stages = st.fixed_dictionaries(
    {"type": st.just("xception"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": st.sampled_from([1, 2]), "convs": st.integers(1, 3),
              "start_with_act": st.booleans(), "grow_first": st.booleans(), **common},
)
uib_stages = st.fixed_dictionaries(
    {"type": st.just("uib"), "out": st.integers(1, 16)},
    optional={"start_kernel": st.integers(0, 5), "kernel": st.integers(1, 5), "end_kernel": st.integers(0, 5),
              "stride": strides, "expand": st.sampled_from([1, 2, 4]), "se_ratio": st.sampled_from([0.0, 0.25]),
              "skip": st.booleans(), "same_stage": st.booleans(), **common},
)
fused_stages = st.fixed_dictionaries(
    {"type": st.just("fused"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": strides, "dilation": st.integers(1, 2), "expand": st.sampled_from([1, 4]),
              "se_ratio": st.sampled_from([0.0, 0.25]), "skip": st.booleans(), **common},
)
mqa_stages = st.fixed_dictionaries(
    {"type": st.just("mqa"), "out": st.integers(1, 16)},
    optional={"heads": st.integers(1, 3), "key_dim": st.integers(1, 8), "kv_stride": st.sampled_from([1, 2]),
              "kernel": st.integers(1, 5), "skip": st.booleans(), **common},
)
convnext_stages = st.fixed_dictionaries(
    {"type": st.just("convnext"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": strides, "expand": st.sampled_from([1, 2.5, 4]), **common},
)
ghost_stages = st.fixed_dictionaries(
    {"type": st.just("ghost"), "out": st.integers(1, 16), "mid": st.integers(1, 24)},
    optional={"kernel": kernels, "stride": strides, "se_ratio": st.sampled_from([0.0, 0.25]), "attention": st.booleans(),
              "rep_branches": st.integers(0, 2), **common},
)
shuffle_stages = st.fixed_dictionaries(  # a unit that changes the width needs a stride: the first one has one
    {"type": st.just("shuffle"), "out": st.integers(1, 8).map(lambda n: 2 * n),
     "stride": st.sampled_from([2, (2, 1), (1, 2)]), "width": st.just("fixed")},
    optional={"kernel": kernels, "repeat": st.integers(1, 2), "act": common["act"]},
)
rep_stages = st.fixed_dictionaries(
    {"type": st.just("rep"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": strides, "branches": st.integers(1, 3), "scale_branch": st.booleans(),
              "separable": st.booleans(), "se_ratio": st.sampled_from([0.0, 0.25]), **common},
)
repvit_stages = st.fixed_dictionaries(
    {"type": st.just("repvit"), "out": st.integers(1, 16)},
    optional={"kernel": kernels, "stride": strides, "expand": st.sampled_from([1, 2, 2.5]),
              "se_ratio": st.sampled_from([0.0, 0.25]), "mixer_norm": st.sampled_from(["after_sum", "per_branch"]),
              **common},
)
pool_stages = st.fixed_dictionaries({"type": st.just("maxpool")},
                                    optional={"kernel": st.integers(1, 3), "stride": strides})
residual_conv_stages = st.fixed_dictionaries({"type": st.just("conv"), "out": st.integers(1, 16), "skip": st.just(True)},
                                             optional=conv_fields)
valid_configs = st.fixed_dictionaries(
    {"stem": st.lists(st.one_of(stem_stages, pool_stages), max_size=2),
     "stages": st.lists(st.one_of(conv_stages, ds_stages, ir_stages, xception_stages, uib_stages, fused_stages,
                                  mqa_stages, residual_conv_stages, convnext_stages, ghost_stages, shuffle_stages,
                                  rep_stages, repvit_stages, pool_stages),
                         max_size=3)},
    optional={
        "width_mult": st.sampled_from([0.25, 0.5, 1.0, 1.5]),
        "channel_divisor": st.sampled_from([1, 2, 4, 8]),
        "separable": st.booleans(),
        "act": st.sampled_from(sorted(ACTIVATIONS)),
        "norm": st.fixed_dictionaries({"type": st.sampled_from(["batchnorm", "layernorm", "none"])}),
        "head": st.fixed_dictionaries({}, optional={"pool": st.sampled_from(["avg", "max"]), "norm": st.booleans(),
                                                    "classifier": st.sampled_from(["linear", "norm_linear"]),
                                                    "distilled": st.booleans(),
                                                    "dropout": st.sampled_from([0.0, 0.5]),
                                                    "conv": st.fixed_dictionaries({"out": st.integers(1, 16)},
                                                                                  optional={"norm": st.booleans(),
                                                                                            "bias": st.booleans()})}),
        "layer_scale": st.sampled_from([None, 1e-5]),
        "reparameterized": st.booleans(),
        "depth_rounding": st.sampled_from(["ceil", "round"]),
        "num_classes": st.integers(0, 12),
        "depth_mult": st.sampled_from([1.0, 1.2, 1.5]),
        "channel_round_limit": st.sampled_from([0.9, 0.5]),
        "drop_path_rate": st.sampled_from([0.0, 0.2]),
        "se": st.fixed_dictionaries({}, optional={"of": st.sampled_from(["input", "expanded"]),
                                                  "divisor": st.sampled_from([1, 8]),
                                                  "gate": st.sampled_from(["sigmoid", "hard_sigmoid"])}),
    },
)


def _resolve(raw: dict[str, Any], input_size: tuple[int, int, int]) -> ModelConfig:
    return resolve_config("fuzz", "fuzz", raw, {}, {"input_size": input_size}, "<hypothesis>")


def _smallest(raw: dict[str, Any], in_chans: int) -> tuple[int, int]:
    """The smallest input of a config; a draw whose mixed conv has more channel groups than channels
    (test_config checks that refusal) is set aside."""
    try:
        return min_input_size(ModelConfig.model_validate({**raw, "name": "fuzz", "family": "fuzz",
                                                          "input_size": (in_chans, 1, 1)}))
    except ConfigError as err:
        reject() if "a mixed conv of" in str(err) else None
        raise


def _rows(layers: list) -> dict[str, tuple]:
    return {r.name: (r.type, tuple(r.output_shape), r.params, r.macs) for r in layers}


@given(raw=valid_configs, in_chans=st.integers(1, 3), extra=st.tuples(st.integers(0, 4), st.integers(0, 4)))
def test_random_valid_config_builds_and_matches_its_closed_form(raw: dict[str, Any], in_chans: int, extra: tuple[int, int]) -> None:
    h0, w0 = _smallest(raw, in_chans)
    size = (in_chans, h0 + extra[0], w0 + extra[1])  # down to the minimum itself
    cfg = _resolve(raw, size)
    model = build_model(cfg).eval()
    plan = plan_model(cfg)
    summary = summarize(model)
    with torch.no_grad():
        out = model(torch.randn(2, *size))
    assert tuple(out.shape) == (2, *plan.output_shape)
    assert summary.output_shape == plan.output_shape
    assert count_params(model) == summary.params == plan.params
    assert count_macs(model, size) == summary.macs == plan.macs
    assert _rows(summary.layers) == _rows(plan.layers)


# Registered models small enough to build many times (all but the EfficientNetV2 M/L/XL and
# MobileNetV4 large sizes; their blocks are all in the smaller ones).
SMALL_MODELS = [name for name in list_models() if plan_model(get_model_config(name)).params < 20_000_000]


@settings(max_examples=50)  # each example builds a registered network: half the profile's count keeps it seconds
@given(name=st.sampled_from(SMALL_MODELS), width=st.sampled_from([0.25, 0.5, 0.75]), separable=st.booleans(),
       extra=st.tuples(st.integers(0, 40), st.integers(0, 40)), num_classes=st.integers(0, 20))
def test_registered_models_with_random_overrides_match_their_closed_form(name: str, width: float, separable: bool,
                                                                          extra: tuple[int, int], num_classes: int) -> None:
    base = get_model_config(name, width_mult=width, separable=separable, num_classes=num_classes)
    least = min_input_size(base)
    min_h, min_w = (max(a, b) for a, b in zip(least, base.min_input_size or (1, 1)))
    size = (base.in_chans, min_h + extra[0], min_w + extra[1])
    model = create_model(name, width_mult=width, separable=separable, num_classes=num_classes, input_size=size).eval()
    plan = plan_model(model.cfg)
    with torch.no_grad():
        assert tuple(model(torch.randn(1, *size)).shape[1:]) == plan.output_shape
    assert count_params(model) == plan.params
    assert count_macs(model, size) == plan.macs


@given(raw=valid_configs, in_chans=st.integers(1, 3))
def test_minimum_input_size_is_tight(raw: dict[str, Any], in_chans: int) -> None:
    h0, w0 = _smallest(raw, in_chans)
    model = build_model(_resolve(raw, (in_chans, h0, w0))).eval()
    with torch.no_grad():
        model(torch.randn(1, in_chans, h0, w0))
        for h, w in ((h0 - 1, w0), (h0, w0 - 1)):
            if min(h, w) < 1:
                continue
            with pytest.raises(ConfigError, match=rf"input_size: {in_chans}x{h}x{w} is smaller than the minimum {h0}x{w0}"):
                _resolve(raw, (in_chans, h, w))
            x = torch.randn(1, in_chans, h, w)
            with pytest.raises(ValueError, match=f"input {h}x{w} is smaller than the minimum {h0}x{w0}"):
                model(x)
            with pytest.raises(RuntimeError):  # without the check torch itself fails: the minimum is exact
                model.forward_head(model.stages(model.stem(x)))


# --- invalid configs: mutations of valid ones ------------------------------------------------

INT_KEYS = {"out", "mid", "repeat", "dilation", "depth_multiplier", "convs", "heads", "key_dim", "branches"}
BOOL_KEYS = {"mid_norm_act", "start_with_act", "grow_first", "scale_branch", "separable"}
STAGE_KEYS = {"conv": {"out", "repeat", "kernel", "stride", "dilation", "dropout"},
              "ds": {"out", "repeat", "kernel", "stride", "dilation", "depth_multiplier", "mid_norm_act", "dropout"},
              "ir": {"out", "repeat", "kernel", "stride", "dilation", "dropout"},
              "uib": {"out", "repeat", "stride", "dropout"},  # a kernel of 0 is allowed: no such conv
              "fused": {"out", "repeat", "kernel", "stride", "dilation", "dropout"},
              "mqa": {"out", "repeat", "kernel", "stride", "heads", "key_dim", "dropout"},
              "xception": {"out", "repeat", "kernel", "stride", "convs", "start_with_act", "grow_first", "dropout"},
              "ghost": {"out", "mid", "repeat", "kernel", "stride", "dropout"},
              "convnext": {"out", "repeat", "kernel", "stride", "dropout"},
              "shuffle": {"out", "repeat", "kernel", "stride", "dropout"},
              "rep": {"out", "repeat", "kernel", "stride", "branches", "scale_branch", "separable", "dropout"},
              "repvit": {"out", "repeat", "kernel", "stride", "dropout"},
              "maxpool": {"repeat", "kernel", "stride", "dropout"}}  # no out (None, the one value allowed)
TOP_KEYS = {"width_mult": "float", "channel_divisor": "int", "num_classes": "count", "separable": "bool", "act": "str"}
WRONG_TYPE = {"int": ["8", 8.5, True, None, [8], {"n": 8}], "count": ["8", 2.5, False, None, [1]],
              "bool": ["yes", 1, 0.0, None, [True]], "str": [3, None, ["relu"], {"a": 1}],
              "float": ["0.5", True, None, [1.0], {"x": 1}]}
OUT_OF_RANGE = {"int": [0, -1, 2**31], "count": [-1, 2**31], "float": [0, -0.5, float("inf"), float("nan"), 101.0]}
STAGE_RANGE = {"stride": [0, 3, -1, (1, 3)], "kernel": [0, -3, (0, 1)], "dropout": [1.0, 1.5, -0.1, float("nan")]}


def _locations(raw: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = [("", raw)]
    out += [(f"stem[{i}]", s) for i, s in enumerate(raw["stem"])]
    out += [(f"stages[{i}]", s) for i, s in enumerate(raw["stages"])]
    return out


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@st.composite
def mutated_configs(draw: st.DrawFn) -> tuple[dict[str, Any], str, str]:
    """(an invalid config, the key path its ConfigError must name, the mutation)."""
    raw = copy.deepcopy(draw(valid_configs))
    path, target = draw(st.sampled_from(_locations(raw)))
    stage_type = target.get("type", "conv") if path else None
    kind = draw(st.sampled_from(["drop", "wrong_type", "out_of_range", "unknown_key", "wrong_nesting", "list_for_mapping"]))
    if kind == "drop":
        if stage_type == "maxpool":  # it has no out; without its type a stem row is a conv, which needs one
            target.pop("type")
            return raw, (path if path.startswith("stages") else _join(path, "out")), kind
        key = draw(st.sampled_from(["stem", "stages"])) if not path else draw(
            st.sampled_from(["out", "type"] if path.startswith("stages") else ["out"]))
        target.pop(key, None)
        return raw, (path if key == "type" else _join(path, key)), kind
    if kind == "wrong_type":
        if path:
            key = draw(st.sampled_from(sorted((INT_KEYS | BOOL_KEYS | {"kernel", "dropout"}) & STAGE_KEYS[stage_type])))
            kind_of = "bool" if key in BOOL_KEYS else "float" if key == "dropout" else "int"
        else:
            key = draw(st.sampled_from(sorted(TOP_KEYS)))
            kind_of = TOP_KEYS[key]
        target[key] = draw(st.sampled_from(WRONG_TYPE[kind_of]))
        return raw, _join(path, key), kind
    if kind == "out_of_range":
        if path:
            key = draw(st.sampled_from(sorted(({"out", "repeat"} | set(STAGE_RANGE)) & STAGE_KEYS[stage_type])))
            target[key] = draw(st.sampled_from(STAGE_RANGE.get(key, OUT_OF_RANGE["int"])))
        else:
            key = draw(st.sampled_from(["width_mult", "channel_divisor", "num_classes"]))
            target[key] = draw(st.sampled_from(OUT_OF_RANGE[TOP_KEYS[key]]))
        return raw, _join(path, key), kind
    if kind == "unknown_key":
        key = draw(st.sampled_from(["outt", "strides", "kernal", "bogus", "x"]) if path else
                   st.sampled_from(["stage", "widht_mult", "num_class", "bogus"]))
        target[key] = draw(st.sampled_from([1, "a", [1], {"a": 1}]))
        return raw, _join(path, key), kind
    if kind == "wrong_nesting":
        if path:  # a top-level key inside a stage
            key = draw(st.sampled_from(["width_mult", "num_classes", "stages", "norm"]))
            target[key] = raw.get(key, 1)
            return raw, _join(path, key), kind
        key = draw(st.sampled_from(["kernel", "repeat", "out", "stride"]))  # a stage key at the top
        raw[key] = 1
        return raw, key, kind
    # a list where a mapping belongs
    if path:
        index = int(path[path.index("[") + 1:-1])
        container = raw["stem"] if path.startswith("stem") else raw["stages"]
        container[index] = list(target.values())
        return raw, path, kind
    key = draw(st.sampled_from(["norm", "head", "pretrained_cfg"]))
    raw[key] = [raw.get(key, 1)]
    return raw, key, kind


@given(case=mutated_configs())
def test_mutated_config_is_a_config_error_naming_the_key_path(case: tuple[dict[str, Any], str, str]) -> None:
    raw, path, kind = case
    with pytest.raises(ConfigError) as info:
        resolve_config("fuzz", "fuzz", raw, {}, {}, "<hypothesis>")
    problems = info.value.problems
    assert any(p.startswith(f"{path}: ") for p in problems), (kind, path, problems)
    assert all(len(p) < 600 for p in problems)


# --- arbitrary YAML text, structures and bytes -----------------------------------------------

FIELD_NAMES = sorted({*TOP_KEYS, *set().union(*STAGE_KEYS.values()), "stem", "stages", "type", "norm", "head",
                      "input_size", "min_input_size", "pretrained_cfg", "mean", "std", "family", "variants", "defaults"})
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                    st.sampled_from(["conv", "ds", "xception", "same", "valid", "relu", "batchnorm"]))
yaml_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=6), st.integers()), children, max_size=4),
    max_leaves=20,
)


def _load_file(content: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.yaml"
        path.write_bytes(content)
        try:
            get_model_config(str(path))
        except ConfigError:
            pass


@given(content=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode)))
def test_arbitrary_bytes_and_text_are_config_errors(content: bytes) -> None:
    _load_file(content)  # any exception but ConfigError fails the test


@given(value=yaml_values)
def test_arbitrary_yaml_structures_are_config_errors(value: Any) -> None:
    _load_file(yaml.safe_dump(value).encode())


@given(raw=valid_configs, key=st.sampled_from(FIELD_NAMES), value=yaml_values, where=st.integers(0, 5))
def test_junk_in_a_valid_config_gives_a_working_model_or_a_config_error(raw: dict[str, Any], key: str, value: Any,
                                                                           where: int) -> None:
    path, target = _locations(raw)[where % len(_locations(raw))]
    target[key] = value
    try:
        cfg = resolve_config("fuzz", "fuzz", raw, {}, {"input_size": (3, 64, 64)}, "<hypothesis>")
        model = build_model(cfg).eval()
    except ConfigError:
        return
    with torch.no_grad():
        assert model(torch.randn(1, *cfg.input_size)).shape[1:] == plan_model(cfg).output_shape
