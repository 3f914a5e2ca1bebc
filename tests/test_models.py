"""Every registered model: reference numbers, the model interface, and the blog's mistakes."""
from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from conftest import (by_name, create_shallow, mechanism_cover, mechanisms, registry, shallow_overrides, small_input_size,
                      structural_variants)
from dszoo import UnknownModelError, ZooNet, count_macs, count_params, create_model, get_model_config, list_models, plan_model
from dszoo.deployment.export import randomise_batchnorm_statistics
from dszoo.profile import layer_gemms, layer_macs
from dszoo.blocks import CepstralMeanNorm, DepthwiseSeparableConv, NormLinearClassifier

ALL_MODELS = registry()  # all but the largest (conftest.registry says why)

# (name, overrides, input (C, H, W), params, MACs, final feature map (C, H, W)) - DESIGN.md table
REFERENCE = [
    ("mobilenet_v1", {}, (3, 224, 224), 4_231_976, 568_740_352, (1024, 7, 7)),
    ("mobilenet_v1_075", {}, (3, 224, 224), 2_585_560, 325_400_448, (768, 7, 7)),
    ("mobilenet_v1_050", {}, (3, 224, 224), 1_331_592, 149_497_088, (512, 7, 7)),
    ("mobilenet_v1_025", {}, (3, 224, 224), 470_072, 41_030_272, (256, 7, 7)),
    ("mobilenet_v1", {"input_size": 192}, (3, 192, 192), 4_231_976, 418_121_728, (1024, 6, 6)),
    ("mobilenet_v1", {"input_size": 160}, (3, 160, 160), 4_231_976, 290_675_200, (1024, 5, 5)),
    ("mobilenet_v1", {"input_size": 128}, (3, 128, 128), 4_231_976, 186_400_768, (1024, 4, 4)),
    ("mobilenet_v1", {"separable": False}, (3, 224, 224), 29_294_088, 4_867_293_184, (1024, 7, 7)),
    ("mobilenet_v1_shallow", {}, (3, 224, 224), 2_887_976, 307_323_392, (1024, 7, 7)),
    ("xception", {}, (3, 299, 299), 22_855_952, 8_357_403_496, (2048, 10, 10)),
    ("ds_cnn_s", {}, (1, 49, 10), 23_180, 2_656_768, (64, 25, 5)),
    ("ds_cnn_m", {}, (1, 49, 10), 136_580, 9_816_384, (172, 13, 5)),
    ("ds_cnn_l", {}, (1, 49, 10), 413_736, 28_327_812, (276, 13, 5)),
    ("mobilenet_v2", {}, (3, 224, 224), 3_504_872, 300_774_272, (1280, 7, 7)),
    ("mobilenet_v2_035", {}, (3, 224, 224), 1_677_128, 59_285_808, (1280, 7, 7)),
    ("mobilenet_v2_050", {}, (3, 224, 224), 1_968_680, 97_131_840, (1280, 7, 7)),
    ("mobilenet_v2_075", {}, (3, 224, 224), 2_636_424, 209_069_792, (1280, 7, 7)),
    ("mobilenet_v2_140", {}, (3, 224, 224), 6_108_776, 582_195_824, (1792, 7, 7)),
    ("mobilenet_v3_large", {}, (3, 224, 224), 5_483_032, 216_589_760, (960, 7, 7)),
    ("mobilenet_v3_large_075", {}, (3, 224, 224), 3_993_528, 154_560_624, (720, 7, 7)),
    ("mobilenet_v3_small", {}, (3, 224, 224), 2_542_856, 56_510_400, (576, 7, 7)),
    ("mobilenet_v3_small_075", {}, (3, 224, 224), 2_041_872, 43_399_344, (432, 7, 7)),
    ("efficientnet_b0", {}, (3, 224, 224), 5_288_548, 385_814_752, (1280, 7, 7)),
    ("efficientnet_b1", {}, (3, 240, 240), 7_794_184, 686_802_832, (1280, 8, 8)),
    ("efficientnet_b2", {}, (3, 260, 260), 9_109_994, 993_561_872, (1408, 9, 9)),
    ("efficientnet_b3", {}, (3, 300, 300), 12_233_232, 1_827_141_392, (1536, 10, 10)),
    ("efficientnet_lite0", {}, (3, 224, 224), 4_652_008, 385_187_552, (1280, 7, 7)),
    ("mnasnet_a1", {}, (3, 224, 224), 3_887_038, 311_579_072, (1280, 7, 7)),
    ("mnasnet_b1", {}, (3, 224, 224), 4_383_312, 314_415_872, (1280, 7, 7)),
    # TensorFlow's padding and eps change neither count
    ("mobilenet_v3_large_tf", {}, (3, 224, 224), 5_483_032, 216_589_760, (960, 7, 7)),
    ("mobilenet_v3_large_075_tf", {}, (3, 224, 224), 3_993_528, 154_560_624, (720, 7, 7)),
    ("mobilenet_v3_small_tf", {}, (3, 224, 224), 2_542_856, 56_510_400, (576, 7, 7)),
    ("mobilenet_v3_small_075_tf", {}, (3, 224, 224), 2_041_872, 43_399_344, (432, 7, 7)),
    ("efficientnet_b0_tf", {}, (3, 224, 224), 5_288_548, 385_814_752, (1280, 7, 7)),
    ("efficientnet_b1_tf", {}, (3, 240, 240), 7_794_184, 686_802_832, (1280, 8, 8)),
    ("efficientnet_b2_tf", {}, (3, 260, 260), 9_109_994, 993_561_872, (1408, 9, 9)),
    ("efficientnet_b3_tf", {}, (3, 300, 300), 12_233_232, 1_827_141_392, (1536, 10, 10)),
    ("efficientnet_lite0_tf", {}, (3, 224, 224), 4_652_008, 385_187_552, (1280, 7, 7)),
]
TIMM_NAMES = {name: get_model_config(name).timm_name for name in list_models() if get_model_config(name).timm_name}


@pytest.mark.parametrize(
    "name,overrides,input_size,params,macs,final_map", REFERENCE,
    ids=[f"{r[0]}-{'-'.join(f'{k}={v}' for k, v in r[1].items()) or 'default'}" for r in REFERENCE],
)
def test_reference_numbers(name, overrides, input_size, params, macs, final_map) -> None:
    model = create_model(name, **overrides).eval()
    assert model.pretrained_cfg["input_size"] == input_size
    assert count_params(model) == params
    assert count_macs(model, input_size) == macs
    with torch.no_grad():
        assert tuple(model.forward_features(torch.zeros(1, *input_size)).shape[1:]) == final_map


def test_a_shallow_model_keeps_every_mechanism() -> None:
    """The costly tests' ``create_shallow`` form of each model they run keeps every mechanism of
    the model (and no new one) in fewer blocks."""
    for name in mechanism_cover():
        cfg, shallow = get_model_config(name), get_model_config(name, **shallow_overrides(name))
        assert mechanisms(shallow) == mechanisms(cfg), name
        assert sum(shallow.stage_repeats()) < sum(cfg.stage_repeats()), name


def test_params_and_macs_equal_the_timm_twins_by_the_same_counter() -> None:
    """Every model with a timm counterpart (its config's ``timm_name``) has timm's parameters and,
    counted by ``count_macs`` at the model's input size, timm's MACs (ours from the closed form,
    which ``test_fuzz_configs`` and the summary tests check against the built model). timm's
    counts (and its state dicts' digests, which test_interop maps) are those
    tests/fixtures/make_timm_counts.py recorded; the first twin of each family is counted again
    with the installed timm (built on the meta device), so the record is timm's."""
    from fixtures.make_timm_counts import read_timm_counts, twin_counts

    recorded = read_timm_counts()
    assert sorted(recorded) == sorted(TIMM_NAMES) and len(TIMM_NAMES) == 128
    families: dict[str, str] = {}
    for ours, row in recorded.items():
        cfg = get_model_config(ours)
        assert (row["timm_name"], row["input_size"]) == (cfg.timm_name, "x".join(map(str, cfg.input_size))), ours
        plan = plan_model(cfg)
        assert (plan.params, plan.macs) == (int(row["params"]), int(row["macs"])), ours
        families.setdefault(cfg.family, ours)
    assert len(families) == 14
    for ours in families.values():
        assert twin_counts(ours) == recorded[ours], f"{ours}: timm {timm.__version__} counts its twin otherwise"


def test_every_row_of_the_reference_table_is_the_closed_form_count() -> None:
    """docs/models.md: each row of one model at its own input size gives its exact params and MACs."""
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| (\d+)x(\d+)x(\d+) \| ([\d,]+) \| ([\d,]+) \|",
                      (Path(__file__).resolve().parents[1] / "docs" / "models.md").read_text(), flags=re.M)
    assert len(rows) >= 85
    for name, c, h, w, params, macs in rows:
        cfg = get_model_config(name)
        assert cfg.input_size == (int(c), int(h), int(w)), name
        plan = plan_model(cfg)
        assert (plan.params, plan.macs) == (int(params.replace(",", "")), int(macs.replace(",", ""))), name


def test_list_models_shows_every_family() -> None:
    assert list_models("mobilenet_v1*") == [
        "mobilenet_v1", "mobilenet_v1_025", "mobilenet_v1_050", "mobilenet_v1_075", "mobilenet_v1_100h",
        "mobilenet_v1_125", "mobilenet_v1_shallow",
    ]
    assert list_models("mobilenet_v3*") == ["mobilenet_v3_large", "mobilenet_v3_large_075", "mobilenet_v3_large_075_tf",
                                            "mobilenet_v3_large_150d", "mobilenet_v3_large_tf", "mobilenet_v3_small",
                                            "mobilenet_v3_small_050", "mobilenet_v3_small_075",
                                            "mobilenet_v3_small_075_tf", "mobilenet_v3_small_tf"]
    assert list_models("mobilenet_v4*") == ["mobilenet_v4_conv_large", "mobilenet_v4_conv_medium",
                                            "mobilenet_v4_conv_small", "mobilenet_v4_conv_small_035",
                                            "mobilenet_v4_conv_small_050", "mobilenet_v4_hybrid_large",
                                            "mobilenet_v4_hybrid_large_075", "mobilenet_v4_hybrid_medium",
                                            "mobilenet_v4_hybrid_medium_075"]
    assert len(list_models("efficientnet_v2*")) == 15
    assert list_models("convnext*") == ["convnext_atto", "convnext_femto", "convnext_nano", "convnext_pico"]
    assert list_models("mixnet*") == ["mixnet_l", "mixnet_l_tf", "mixnet_m", "mixnet_m_tf", "mixnet_s", "mixnet_s_tf",
                                      "mixnet_xl"]
    assert list_models("ghostnet*") == ["ghostnet_050", "ghostnet_100", "ghostnet_130", "ghostnetv2_100", "ghostnetv2_130",
                                        "ghostnetv2_160", "ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130",
                                        "ghostnetv3_160"]
    assert list_models("mobileone*") == [f"mobileone_s{i}" for i in range(5)]
    assert list_models("shufflenet*") == ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                                          "shufflenet_v2_x2_0"]
    assert set(list_models()) >= {"xception", "ds_cnn_s", "ds_cnn_m", "ds_cnn_l", "mobilenet_v2", "mobilenet_v2_035",
                                  "mobilenet_v2_050", "mobilenet_v2_075", "mobilenet_v2_140", "efficientnet_b0",
                                  "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_lite0",
                                  "mnasnet_a1", "mnasnet_b1"}
    assert list_models("nothing*") == []


# --- registry-wide interface tests (timm's test design) ---------------------------------------

@by_name(ALL_MODELS)
def test_forward_small_input(built: ZooNet) -> None:
    model = built
    size = small_input_size(model.cfg)
    with torch.no_grad():
        out = model(torch.randn(2, *size))
    assert out.shape == (2, model.cfg.num_classes)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", structural_variants())  # interface, not widths
def test_backward_new_head_reaches_every_parameter(name: str) -> None:
    model = create_model(name, num_classes=7).train()
    size = small_input_size(model.cfg)
    out = model(torch.randn(2, *size))
    assert out.shape == (2, 7)
    out.sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []


@by_name(ALL_MODELS)
def test_feature_info_matches_feature_maps(built: ZooNet) -> None:
    model = built
    c, h, w = small_input_size(model.cfg)
    maps: dict[str, torch.Tensor] = {}
    hooks = [model.get_submodule(info["module"]).register_forward_hook(
        lambda mod, inp, out, key=info["module"]: maps.__setitem__(key, out)) for info in model.feature_info]
    try:
        with torch.no_grad():
            final = model.forward_features(torch.randn(1, c, h, w))
    finally:
        for hook in hooks:
            hook.remove()
    reductions = [info["reduction"] for info in model.feature_info]
    assert reductions == sorted(set(reductions)), "one map per reduction, increasing"
    prev_h, prev_red = h, 1
    planned = {layer.name: layer.output_shape for layer in plan_model(model.cfg, (c, h, w)).layers}
    for info in model.feature_info:
        fmap = maps[info["module"]]
        assert fmap.shape[1] == info["num_chs"]
        if model.cfg.row_padding == "none":  # rows shrink by each kernel: the size of the module's last layer
            last = [shape for name, shape in planned.items() if name.startswith(info["module"] + ".")][-1]
            assert tuple(fmap.shape[1:]) == last, info
        else:  # each map is the previous one divided by the extra reduction ("valid" convs may trim a few pixels)
            expected = math.ceil(prev_h / (info["reduction"] // prev_red))
            assert expected - 4 <= fmap.shape[2] <= expected, info
        prev_h, prev_red = fmap.shape[2], info["reduction"]
    assert model.feature_info[-1]["num_chs"] == final.shape[1]
    head = model.cfg.head.conv  # MobileNetV3: the pooled features go through one more conv
    assert model.num_features == (head.out if head is not None else final.shape[1])
    assert torch.equal(maps[model.feature_info[-1]["module"]], final)


@pytest.mark.parametrize("name", structural_variants())  # interface, not widths
def test_reset_classifier_and_pre_logits(name: str) -> None:
    model = create_model(name).eval()
    x = torch.randn(2, *small_input_size(model.cfg))
    model.reset_classifier(5)
    kind = nn.Linear if model.cfg.head.classifier == "linear" else NormLinearClassifier  # the config's kind, kept
    assert type(model.get_classifier()) is kind and model.get_classifier().out_features == 5
    assert model.pretrained_cfg["num_classes"] == 5
    with torch.no_grad():
        feats = model.forward_features(x)
        assert model.forward_head(feats).shape == (2, 5)
        assert model.forward_head(feats, pre_logits=True).shape == (2, model.num_features)
        model.reset_classifier(0)
        assert model(x).shape == (2, model.num_features)


@by_name(structural_variants())  # interface, not widths
def test_pretrained_cfg_works_with_timm_data_config(built: ZooNet) -> None:
    model = built
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == model.cfg.input_size
    assert len(data_cfg["mean"]) == model.cfg.in_chans
    assert data_cfg["interpolation"] == model.cfg.pretrained_cfg.interpolation
    assert model.get_submodule(model.pretrained_cfg["first_conv"]).in_channels == model.cfg.in_chans
    assert model.get_submodule(model.pretrained_cfg["classifier"]) is model.get_classifier()


@by_name(structural_variants())  # the input check depends on the network, not its widths
def test_wrong_channel_count_names_in_chans(built: ZooNet) -> None:
    model = built
    c, h, w = small_input_size(model.cfg)
    with pytest.raises(ValueError, match=f"expected {c} input channels \\(in_chans={c}\\), got {c + 1}"):
        model(torch.randn(1, c + 1, h, w))


@pytest.mark.parametrize("name", mechanism_cover())
def test_inference_without_gradients_computes_what_a_recorded_forward_does(name: str) -> None:
    """Where no gradient is recorded, residual sums are written into their branch's output and
    identity norms and activations are skipped: the outputs stay those of a recorded forward,
    and the input is left as it was."""
    model = randomise_batchnorm_statistics(create_shallow(name)).eval()
    x = torch.randn(2, *small_input_size(model.cfg))
    x_before = x.clone()
    recorded = model(x)
    assert recorded.requires_grad
    with torch.inference_mode():
        inferred = model(x)
    assert torch.equal(x, x_before)
    torch.testing.assert_close(inferred, recorded.detach())


def test_the_heads_dropout_drops_while_training_and_its_hooks_fire() -> None:
    """forward_head steps past an inert dropout only: at a rate above 0 in training mode it drops
    features, and a hook on it fires in either mode."""
    model = create_model("mobilenet_v1_025", num_classes=4, drop_rate=0.5)
    features = torch.ones(64, model.num_features, 1, 1)
    seen = []
    model.head_drop.register_forward_hook(lambda module, args, out: seen.append(out))
    with torch.no_grad():
        trained = model.train().forward_head(features, pre_logits=True)
        evaluated = model.eval().forward_head(features, pre_logits=True)
    assert set(trained.unique().tolist()) == {0.0, 2.0} and torch.equal(evaluated, torch.ones_like(evaluated))
    assert [t.shape for t in seen] == [trained.shape, evaluated.shape]


@pytest.mark.parametrize("name", mechanism_cover())
def test_separable_false_replaces_every_separable_conv(name: str) -> None:
    sep = create_shallow(name)
    std = create_shallow(name, separable=False)
    depthwise = [m for m in std.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise == []
    assert count_params(std) > count_params(sep)
    size = small_input_size(sep.cfg)
    assert std.eval()(torch.randn(1, *size)).shape == sep.eval()(torch.randn(1, *size)).shape


@pytest.mark.parametrize("name", mechanism_cover())
@pytest.mark.parametrize("separable", [True, False])
def test_layer_gemms_cover_every_ungrouped_layer(name: str, separable: bool) -> None:
    """The benchmark's bare GEMMs do exactly the MACs of the ungrouped convs and linear layers:
    all of them for the standard-conv twin, all but the depthwise convs' for the model."""
    model = create_shallow(name, separable=separable)
    size, batch = small_input_size(model.cfg), 3
    gemms = layer_gemms(model, size, batch)
    grouped = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    assert bool(grouped) == separable and not grouped & gemms.keys()
    per_layer = layer_macs(model, size)
    assert set(gemms) | grouped == set(per_layer)
    assert {n: m * k * c for n, (m, k, c) in gemms.items()} == {n: batch * per_layer[n] for n in gemms}


def test_layer_gemms_shapes_of_mobilenet() -> None:
    """im2col shapes: (batch x output pixels, in channels x kernel area, out channels)."""
    gemms = layer_gemms(create_model("mobilenet_v1"), (3, 224, 224), batch=2)
    assert gemms["stem.0.conv"] == (2 * 112 * 112, 3 * 3 * 3, 32)
    assert gemms["stages.0.0.pw.conv"] == (2 * 112 * 112, 32, 64)
    assert gemms["stages.4.1.pw.conv"] == (2 * 7 * 7, 1024, 1024)
    assert gemms["classifier"] == (2, 1024, 1000)
    assert len(gemms) == 1 + 13 + 1


def test_only_the_default_inits_the_builder_redraws_are_skipped() -> None:
    """While a model is built PyTorch's default init of its Conv2d and Linear layers is deferred
    (the builder draws them again); a layer of another kind gets its default init when the model
    is finished, the same numbers it would have had."""
    from dszoo.builder import _DeferredDefaultInit

    torch.manual_seed(0)
    expected = nn.Conv1d(4, 6, 3)
    torch.manual_seed(0)
    with _DeferredDefaultInit() as deferred:
        model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Linear(6, 2), nn.Conv1d(4, 6, 3))
    assert len(deferred.calls) == 6  # weight and bias of each
    deferred.finish(model)
    assert torch.equal(model[2].weight, expected.weight) and torch.equal(model[2].bias, expected.bias)
    assert deferred.calls == []
    torch.manual_seed(0)
    built = create_model("mobilenet_v1_025", num_classes=10)
    stem = built.stem[0].conv.weight
    assert stem.std().item() == pytest.approx(math.sqrt(2 / (8 * 9)), rel=0.2)  # kaiming_normal_, fan_out


def test_overrides_in_chans_num_classes_width() -> None:
    model = create_model("mobilenet_v1_025", num_classes=10, in_chans=1)
    assert model.stem[0].conv.in_channels == 1 and model.get_classifier().out_features == 10
    assert model(torch.randn(3, 1, 64, 64)).shape == (3, 10)
    assert create_model("mobilenet_v1", width_mult=0.5).num_features == 512
    assert create_model("mobilenet_v1", drop_rate=0.3).head_drop.p == 0.3
    assert create_model("mobilenet_v1", input_size=(3, 160, 128)).pretrained_cfg["input_size"] == (3, 160, 128)


# --- corrections of the blog (seed 001) --------------------------------------------------------

def test_blog_no_two_blocks_share_weights() -> None:
    model = create_model("mobilenet_v1")
    ptrs = [p.data_ptr() for p in model.parameters()]
    assert len(ptrs) == len(set(ptrs))
    assert len(ptrs) == len(dict(model.named_parameters(remove_duplicate=False)))


def test_blog_every_conv_followed_by_bn_and_relu6() -> None:
    model = create_model("mobilenet_v1")
    units = [m for m in model.modules() if hasattr(m, "conv") and isinstance(m.conv, nn.Conv2d)]
    assert len(units) == 27  # 1 stem conv + 13 x (dw + pw)
    assert all(isinstance(u.norm, nn.BatchNorm2d) and isinstance(u.act, nn.ReLU6) and u.conv.bias is None for u in units)


def test_blog_second_to_last_depthwise_has_stride_1() -> None:
    model = create_model("mobilenet_v1")
    dw_strides = [m.stride[0] for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert dw_strides == [1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1]


@pytest.mark.parametrize("size", [224, 160, 256])
def test_blog_batch_of_b_images_gives_b_rows(size: int) -> None:
    model = create_model("mobilenet_v1").eval()
    with torch.no_grad():
        assert model(torch.randn(3, 3, size, size)).shape == (3, 1000)


def test_blog_classifier_is_used_and_no_softmax() -> None:
    model = create_model("mobilenet_v1").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        before = model(x)
        model.get_classifier().bias.add_(1.0)
        after = model(x)
    torch.testing.assert_close(after, before + 1.0)  # logits: a bias shift shows up unchanged
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())


# --- Xception and DS-CNN specifics -------------------------------------------------------------

def test_xception_structure_matches_keras() -> None:
    model = create_model("xception")
    assert [m.conv.padding for m in model.stem] == [(0, 0), (0, 0)]
    pools = [m for m in model.modules() if isinstance(m, nn.MaxPool2d)]
    assert [(p.kernel_size, p.stride, p.padding) for p in pools] == [(3, 2, 1)] * 4
    first = model.stages[0][0]
    assert not isinstance(first.body[0], nn.ReLU), "the first entry block starts without ReLU"
    assert isinstance(model.stages[1][0].body[0], nn.ReLU)
    assert len(model.stages[3]) == 8


@pytest.mark.parametrize("size,final", [(224, 7), (71, 3), (299, 10)])
def test_xception_other_sizes(size: int, final: int) -> None:
    model = create_model("xception").eval()
    with torch.no_grad():
        assert model.forward_features(torch.randn(1, 3, size, size)).shape == (1, 2048, final, final)


def test_xception_below_minimum_is_a_clear_error() -> None:
    model = create_model("xception")
    with pytest.raises(ValueError, match="input 70x70 is smaller than the minimum 71x71 for xception"):
        model(torch.randn(1, 3, 70, 70))


def test_ds_cnn_stem_dropout_and_35_words() -> None:
    model = create_model("ds_cnn_s", num_classes=35)
    assert isinstance(model.stem[-1], nn.Dropout) and model.stem[-1].p == 0.2
    assert model.head_drop.p == 0.4
    assert model.eval()(torch.randn(4, 1, 49, 10)).shape == (4, 35)


@pytest.mark.parametrize("name", ["ds_cnn_s", "ds_cnn_m", "ds_cnn_l"])
@torch.no_grad()
def test_ds_cnn_hears_through_a_constant_spectral_envelope(name: str) -> None:
    """``input_norm: cepstral_mean`` (the DS-CNNs' default): a constant added to each MFCC
    coefficient over the clip, as a voice's or a microphone's envelope adds, leaves the output
    as it was; with ``none`` (the references' network, same parameters) it does not."""
    x, envelope = torch.randn(2, 1, 49, 10), 3 * torch.randn(1, 1, 1, 10)
    normed = create_model(name).eval()
    plain = create_model(name, input_norm="none").eval()
    plain.load_state_dict(normed.state_dict())
    assert isinstance(normed.input_norm, CepstralMeanNorm) and plain.input_norm is None
    heard, unheard = normed.forward_features, plain.forward_features
    scale = float(heard(x).abs().max())  # a fresh network's activations are small
    assert (heard(x + envelope) - heard(x)).abs().max() < 1e-4 * scale
    assert (unheard(x + envelope) - unheard(x)).abs().max() > 0.1 * scale
    assert torch.allclose(unheard(x - x.mean(dim=-2, keepdim=True)), heard(x), rtol=1e-4, atol=1e-6 * scale)
    features = create_model(name, features_only=True).eval()
    features.load_state_dict(normed.state_dict(), strict=False)
    assert (features(x + envelope)[-1] - features(x)[-1]).abs().max() < 1e-4 * scale


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError, match="unknown model 'mobilenetv1'; did you mean 'mobilenet_v1'"):
        create_model("mobilenetv1")
    with pytest.raises(UnknownModelError, match="did you mean 'xception'"):
        get_model_config("xceptoin")


def test_a_user_yaml_mixes_block_types(tmp_path: Path) -> None:
    """docs/configs.md's example: a MobileNetV1 stem and ds stage, inverted residuals with
    squeeze-excite and hard-swish, an Xception unit; one builder, the plan agrees."""
    from dszoo import plan_model

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    text = docs.split("Mixing them is fine", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mixed.yaml").write_text(text)
    model = create_model(str(tmp_path / "mixed.yaml"), num_classes=10, input_size=64).eval()
    kinds = [type(block).__name__ for stage in model.stages for block in stage]
    assert kinds == ["DepthwiseSeparableConv", "InvertedResidual", "InvertedResidual", "XceptionBlock"]
    ir = model.stages[1][1]
    assert ir.mid_chs == 256 and ir.has_skip and isinstance(ir.se.gate, torch.nn.Sigmoid)
    assert isinstance(ir.dw.act, torch.nn.Hardswish) and not model.stages[1][0].has_skip
    plan = plan_model(model.cfg)
    assert plan.params == count_params(model) and plan.macs == count_macs(model, (3, 64, 64))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_a_user_yaml_mixes_fused_uib_and_attention_blocks(tmp_path: Path) -> None:
    """docs/configs.md's second example: a MobileNetV1 stem and ds stage, a fused stage, ExtraDW and
    ConvNeXt-like bottlenecks and Mobile MQA in one stage; one builder, the plan agrees, the
    depthwise conv that takes the stride is the middle one."""
    from dszoo import plan_model
    from dszoo.blocks import FusedInvertedResidual, MobileMultiQueryAttention, UniversalInvertedResidual

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    text = docs.split("universal inverted bottlenecks with attention", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mixed.yaml").write_text(text)
    model = create_model(str(tmp_path / "mixed.yaml"), num_classes=10, input_size=64).eval()
    blocks = [block for stage in model.stages for block in stage]
    assert [type(b) for b in blocks] == [DepthwiseSeparableConv, FusedInvertedResidual, UniversalInvertedResidual,
                                         UniversalInvertedResidual, MobileMultiQueryAttention]
    extra_dw, convnext = blocks[2], blocks[3]
    assert extra_dw.dw_start.conv.stride == (1, 1) and extra_dw.dw.conv.stride == (2, 2)
    assert isinstance(convnext.dw, nn.Identity) and convnext.dw_start.conv.kernel_size == (3, 3) and convnext.has_skip
    assert blocks[4].attn.key.down_conv.stride == (2, 2) and blocks[4].attn.num_heads == 4
    plan = plan_model(model.cfg)
    assert plan.params == count_params(model) and plan.macs == count_macs(model, (3, 64, 64))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_a_user_yaml_mixes_shuffle_units_and_inverted_residuals(tmp_path: Path) -> None:
    """docs/configs.md's third example: ShuffleNetV2's conv + max-pool stem and shuffle units in
    front of a squeeze-excite inverted residual; the plan agrees, the min input counts the pool."""
    from dszoo import plan_model
    from dszoo.blocks import ConvNormAct, InvertedResidual, MaxPool, ShuffleUnit

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    text = docs.split("squeeze-excite inverted residuals:", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mixed.yaml").write_text(text)
    model = create_model(str(tmp_path / "mixed.yaml"), num_classes=10, input_size=64).eval()
    assert [type(m) for m in model.stem] == [ConvNormAct, MaxPool]
    blocks = [block for stage in model.stages for block in stage]
    assert [type(b) for b in blocks] == [ShuffleUnit] * 3 + [InvertedResidual, ConvNormAct]
    assert blocks[0].downsample and not blocks[1].downsample and blocks[1].branch[0].in_chs == 24
    assert [info["reduction"] for info in model.feature_info] == [4, 8, 16]
    plan = plan_model(model.cfg)
    assert plan.params == count_params(model) and plan.macs == count_macs(model, (3, 64, 64))
    assert plan.min_input_size == (1, 1) and plan_model(model.cfg, (3, 17, 9)).params == plan.params
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)
        assert model.forward_features(torch.randn(1, 3, 17, 9)).shape == (1, 512, 2, 1)


def test_a_user_yaml_mixes_ghost_bottlenecks_and_inverted_residuals(tmp_path: Path) -> None:
    """docs/configs.md's fourth example: GhostNet bottlenecks (one strided, with squeeze-excite) between
    inverted residuals; the ghost modules make half their features by a cheap depthwise conv and
    cut the concatenation to the width asked (an odd one here); the plan agrees."""
    from dszoo import plan_model
    from dszoo.blocks import GhostBottleneck, InvertedResidual

    docs = (Path(__file__).resolve().parents[1] / "docs" / "configs.md").read_text()
    text = docs.split("ghost bottlenecks between inverted residuals:", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "mixed.yaml").write_text(text)
    model = create_model(str(tmp_path / "mixed.yaml"), num_classes=10, input_size=64).eval()
    blocks = [block for stage in model.stages for block in stage]
    assert [type(b) for b in blocks] == [InvertedResidual, GhostBottleneck, GhostBottleneck, InvertedResidual]
    strided, kept = blocks[1], blocks[2]
    assert strided.dw.conv.stride == (2, 2) and strided.se.conv_reduce.out_channels == 6  # a quarter of its input
    assert (strided.mid_chs, strided.ghost1.primary.out_chs, strided.ghost2.out_chs) == (72, 36, 40)
    assert isinstance(kept.shortcut, nn.Identity) and isinstance(kept.dw, nn.Identity)
    assert (kept.mid_chs, kept.ghost1.primary.out_chs) == (99, 50)  # ceil(99 / 2) convs, 100 cut to 99
    plan = plan_model(model.cfg)
    assert plan.params == count_params(model) and plan.macs == count_macs(model, (3, 64, 64))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_import_and_create_model_leave_timm_and_torchvision_unimported() -> None:
    """``import dszoo`` and building a network without stochastic depth import neither timm nor
    torchvision (whose feature extraction imports ``torch._dynamo``): together they would double
    the start of every command. timm comes in where it is used (``DropPath``, ``FeatureInfo``,
    training's optimizers)."""
    heavy = ("timm", "torchvision", "torch._dynamo")
    code = ("import sys, dszoo; dszoo.create_model('mobilenet_v1'); dszoo.create_model('ds_cnn_s'); "
            f"print([m for m in {heavy!r} if m in sys.modules]); "
            "dszoo.create_model('mobilenet_v1', features_only=True); print('timm' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["[]", "True"]
