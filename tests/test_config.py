"""Config loading: user YAML, overrides, immutability, and errors that name file, key and value."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pydantic
import pytest
import torch

from dszoo import registry
from dszoo import (ConfigError, count_params, create_model, get_model_config, imagenet_top1, list_models,
                   register_model)

REPO = Path(__file__).resolve().parents[1]

TINY = """\
family: tiny
defaults:
  input_size: [1, 16, 16]
  num_classes: 4
  act: relu
  stem: {out: 8, kernel: 3, stride: 2}
  stages:
    - {type: ds, out: 16, repeat: 2, stride: 2}
variants:
  tiny_a: {}
  tiny_b: {width_mult: 2.0}
"""


def write(tmp_path: Path, text: str, name: str = "net.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


def test_user_yaml_flat_config(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        input_size: [3, 32, 32]
        num_classes: 5
        stem: {out: 16, kernel: 3, stride: 2}
        stages:
          - {type: ds, out: 32, stride: 2}
          - {type: conv, out: 32, kernel: 1}
        """, "my_net.yaml")
    model = create_model(str(path))
    assert model.cfg.name == "my_net"
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    # 3*9*16 + 32 (bn) + 16*9 + 32 + 16*32 + 64 + 32*32 + 64 + 32*5 + 5
    assert count_params(model) == 432 + 32 + 144 + 32 + 512 + 64 + 1024 + 64 + 165


def test_user_yaml_family_file_variants(tmp_path: Path) -> None:
    path = write(tmp_path, TINY)
    assert create_model(f"{path}:tiny_b").num_features == 32
    with pytest.raises(ConfigError, match="defines 2 models \\(tiny_a, tiny_b\\); name one as"):
        create_model(str(path))
    with pytest.raises(ConfigError, match="no variant 'tiny_c'; did you mean 'tiny_b', 'tiny_a'"):
        create_model(f"{path}:tiny_c")


def test_variant_names_must_be_strings(tmp_path: Path) -> None:
    """YAML reads `1:` and `null:` as a number and None: a model name must be written as text."""
    path = write(tmp_path, TINY + "  1: {}\n  null: {width_mult: 2.0}\n")
    with pytest.raises(ConfigError) as exc:
        create_model(f"{path}:tiny_a")
    assert problems(exc) == ["variants: name 1 must be a string (quote it in the YAML)",
                             "variants: name None must be a string (quote it in the YAML)"]
    quoted = write(tmp_path, TINY + "  '1': {}\n", name="quoted.yaml")
    assert create_model(f"{quoted}:1").num_features == 16


def test_register_model_from_mapping_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    list_models()  # load the built-in families, then isolate this test's registrations
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_model("test_registered_tiny", {"stem": {"out": 8}, "stages": [{"type": "ds", "out": 8}], "num_classes": 3})
    assert "test_registered_tiny" in list_models("test_*")
    assert create_model("test_registered_tiny").get_classifier().out_features == 3
    with pytest.raises(ValueError, match="already registered"):
        register_model("test_registered_tiny", {"stem": {"out": 8}, "stages": []})
    register_model("test_registered_tiny", {"stem": {"out": 8}, "stages": [], "num_classes": 5}, overwrite=True)
    assert get_model_config("test_registered_tiny").num_classes == 5  # not the config resolved before
    register_model("mobilenet_v2", {"stem": {"out": 8}, "stages": []}, overwrite=True)
    assert imagenet_top1("mobilenet_v2") is None  # the published figure was for the built-in network
    with pytest.raises(ConfigError, match="stem\\[0\\].out: must be greater than 0, got 0"):
        register_model("test_bad", {"stem": {"out": 0}, "stages": []})
    assert "test_bad" not in list_models()
    register_model("test_from_file", str(write(tmp_path, TINY)) + ":tiny_b")
    assert create_model("test_from_file").num_features == 32


def test_merge_order_defaults_variant_overrides() -> None:
    cfg = get_model_config("ds_cnn_m", num_classes=35, in_chans=2, input_size=(40, 12))
    assert cfg.stem[0].out == 172 and cfg.stem[0].stride == (2, 1)  # variant merged over defaults
    assert cfg.stem[0].kernel == (10, 4) and cfg.stem[0].dropout == 0.2  # defaults kept
    assert cfg.num_classes == 35 and cfg.input_size == (2, 40, 12)


def test_config_is_immutable_and_shared_defaults_untouched() -> None:
    cfg = get_model_config("mobilenet_v1")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        cfg.num_classes = 3  # type: ignore[misc]
    assert isinstance(cfg.stages, tuple)
    get_model_config("mobilenet_v1", width_mult=0.5, head={"dropout": 0.5})
    assert get_model_config("mobilenet_v1") == cfg


# --- errors ------------------------------------------------------------------------------------

def test_all_problems_at_once_with_file_path_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, """\
        stem: {out: 0, kernel: 3, stride: 3}
        act: relu7
        stages:
          - {type: ds, out: 64, stride: 0, depth_multipler: 2}
          - {type: dss, out: 64}
          - {type: ds, out: -5, depth_multiplier: 1.5}
        head: {dropuot: 0.1}
        """)
    with pytest.raises(ConfigError) as exc:
        create_model(str(path))
    assert str(path) in str(exc.value)
    assert problems(exc) == [
        "act: unknown activation 'relu7'; allowed: gelu, hard_sigmoid, hard_swish, hardswish, identity, relu, relu6, sigmoid, silu, swish; "
        "did you mean 'relu', 'relu6', 'gelu'?",
        "stem[0].out: must be greater than 0, got 0",
        "stem[0].stride: must be 1, 2 or 4 (or a pair of them), got 3",
        "stages[0].stride: must be 1 or 2 (or a pair of them), got 0",
        "stages[0].depth_multipler: unknown key; did you mean 'depth_multiplier'? "
        "(allowed: out, repeat, stride, kernel, dropout, act, width, scale_depth, same_stage, type, depth_multiplier, dilation, mid_norm_act, se_ratio, pw_act, skip)",
        "stages[1].type: unknown block type 'dss'; allowed: conv, ds, ir, uib, fused, mqa, convnext, ghost, shuffle, rep, repvit, maxpool, xception; "
        "did you mean 'ds'?",
        "stages[2].out: must be greater than 0, got -5",
        "stages[2].depth_multiplier: must be a valid integer, got 1.5",
        "head.dropuot: unknown key; did you mean 'dropout'? (allowed: pool, norm, dropout, conv, classifier, distilled)",
    ]


@pytest.mark.parametrize("text,message", [
    ("stem: [{out: 8}, {type: avgpool}]\nstages: [{type: shuffle, out: 8, stride: 2}]\n",
     "stem[1].type: unknown block type 'avgpool'; allowed: conv, rep, maxpool; did you mean 'maxpool'?"),
    ("stem: [{out: 8}, {type: maxpool, out: 8}]\nstages: [{type: shuffle, out: 8, stride: 2}]\n",
     "stem[1].out: must be None, got 8"),
    ("stem: {out: 8}\nstages: [{type: shuffle, out: 7, stride: 2}]\n", "stages[0].out: must be a multiple of 2, got 7"),
    ("channel_divisor: 1\nstem: {out: 2}\nstages: [{type: ir, out: 8, expand: 1, kernels: [3, 5, 7]}]\n",
     "stages[0]: a mixed conv of 3 channel groups (stages.0.0.dw.conv) needs at least 3 channels in and out, got 2 -> 2"),
    ("stem: {out: 8}\nstages: [{type: shuffle, out: 16}]\n",
     "stages[0]: a shuffle unit of stride 1 keeps its width, but 8 channels come in and out is 16: give the "
     "stage's first unit stride 2"),
    ("stem: {out: 8}\nstages: [{type: ghost, out: 8, mid: 16, rep: true, rep_branches: 3}]\n",
     "stages[0]: rep and rep_branches: RepGhost's modules add the ghost features, GhostNetV3's concatenate them; "
     "a row has one kind"),
    ("stem: {out: 8}\nstages: [{type: ghost, out: 8, mid: 16, rep_branches: 17}]\n",
     "stages[0].rep_branches: must be less than or equal to 16, got 17"),
])
def test_each_kind_of_row_is_checked_by_its_own_rules(tmp_path: Path, text: str, message: str) -> None:
    """A max pool takes no ``out``; a shuffle unit splits its output in halves, and keeps its width
    unless it has a stride (ShuffleNetV2, Figure 3); a ghost row has one kind of ghost module."""
    with pytest.raises(ConfigError) as exc:
        create_model(str(write(tmp_path, text)))
    assert problems(exc) == [message]


@pytest.mark.parametrize("multiplier,message", [
    (0, "must be greater than 0, got 0"),
    ("two", "must be a valid integer, got 'two'"),
    (True, "must be a valid integer, got True"),
])
def test_depth_multiplier_must_be_positive_int(tmp_path: Path, multiplier: object, message: str) -> None:
    path = write(tmp_path, f"stem: {{out: 8}}\nstages: [{{type: ds, out: 8, depth_multiplier: {str(multiplier).lower() if multiplier is True else multiplier}}}]\n")
    with pytest.raises(ConfigError) as exc:
        create_model(str(path))
    assert problems(exc) == [f"stages[0].depth_multiplier: {message}"]


def test_malformed_yaml_syntax(tmp_path: Path) -> None:
    path = write(tmp_path, "stem: {out: 8\nstages: [\n")
    with pytest.raises(ConfigError, match=f"{path}: invalid YAML: line 2"):
        create_model(str(path))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no_such_dir/net.yaml: file not found"):
        create_model("no_such_dir/net.yaml")


def test_top_level_must_be_mapping_and_family_keys_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="<top level>: must be a mapping, got list"):
        create_model(str(write(tmp_path, "- 1\n- 2\n")))
    with pytest.raises(ConfigError, match="varients: unknown key; did you mean 'variants'"):
        create_model(str(write(tmp_path, TINY + "varients: {}\n")))


def test_unknown_override_suggests_close_match() -> None:
    with pytest.raises(ConfigError, match="num_clases: unknown override; did you mean 'num_classes'"):
        create_model("mobilenet_v1", num_clases=10)


def test_bad_override_values_name_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        create_model("mobilenet_v1", num_classes=-3, width_mult=0)
    assert "overrides" in str(exc.value)
    assert problems(exc) == [
        "num_classes: must be greater than or equal to 0, got -3",
        "width_mult: must be greater than 0, got 0",
    ]


def test_yaml_is_loaded_safely(tmp_path: Path) -> None:
    path = write(tmp_path, "stem: !!python/object/apply:os.system ['echo pwned']\nstages: []\n")
    with pytest.raises(ConfigError, match="invalid YAML: .*could not determine a constructor for the tag 'tag:yaml.org,2002:python/object/apply:os.system'"):
        create_model(str(path))


def test_json_schema_describes_the_config() -> None:
    import json

    from dszoo import config_json_schema

    schema = json.loads(json.dumps(config_json_schema()))
    assert schema["required"] == ["stem", "stages"]
    assert {"input_size", "width_mult", "separable", "act"} <= set(schema["properties"])
    stage_types = {d["properties"]["type"].get("const") for d in schema["$defs"].values() if "type" in d.get("properties", {})}
    assert {"ds", "xception"} <= stage_types
