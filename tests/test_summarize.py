"""models.summarize and scripts/summarize.py: exact totals, ratios, JSON, plot and error exits."""
from __future__ import annotations

import json
import math
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import by_name, run_in_process, small_input_size, structural_variants

from dszoo import ZooNet, count_macs, imagenet_top1, count_params, create_model, list_models
from dszoo.measurement.summary import summarize

REPO = Path(__file__).resolve().parents[1]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return run_in_process("summarize", args, cwd=REPO)


@by_name(structural_variants())  # the summary walks the network; widths: test_models
def test_summary_totals_equal_reference_counts(built: ZooNet) -> None:
    """At a small input: the totals' bookkeeping does not depend on the size (the native sizes'
    counts are test_models's, against the closed form)."""
    model = built
    size = small_input_size(model.cfg)
    s = summarize(model, size)
    assert s.params == count_params(model) and s.macs == count_macs(model, size)
    assert s.macs == sum(r.macs for r in s.stages) == sum(r.macs for r in s.layers)
    assert s.params == sum(r.params for r in s.stages)
    assert s.output_shape == (model.cfg.num_classes,)


@by_name(structural_variants())  # the summary walks the network; widths: test_models
def test_stage_shapes_are_those_of_a_real_forward_pass(built: ZooNet) -> None:
    model = built
    size = small_input_size(model.cfg)
    x = torch.randn(1, *size)
    real = []
    with torch.no_grad():
        x = model.stem(x)
        real.append(("stem", tuple(x.shape[1:])))
        for i, stage in enumerate(model.stages):
            x = stage(x)
            real.append((f"stages.{i}", tuple(x.shape[1:])))
        real.append(("head", tuple(model(torch.randn(1, *size)).shape[1:])))
    assert [(r.name, r.output_shape) for r in summarize(model, size).stages] == real


def test_json_totals_and_compare_standard_for_mobilenet_v1() -> None:
    res = run("--model", "mobilenet_v1", "--format", "json", "--compare-standard")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["model"], data["input_size"], data["output_shape"]) == ("mobilenet_v1", [3, 224, 224], [1000])
    assert (data["params"], data["trainable_params"], data["macs"]) == (4_231_976, 4_231_976, 568_740_352)
    assert (data["standard"]["params"], data["standard"]["macs"]) == (29_294_088, 4_867_293_184)
    assert len(data["standard"]["layers"]) == 13
    assert {"name", "type", "output_shape", "params", "macs"} <= set(data["layers"][0])


@pytest.mark.parametrize("name", ["mobilenet_v1", "xception", "ds_cnn_m"])
def test_theoretical_ratio_matches_measured(name: str) -> None:
    s = summarize(name, compare_standard=True)
    assert s.standard is not None and s.standard.layers
    for row in s.standard.layers:
        if row.stride == (1, 1):
            assert row.ratio == pytest.approx(row.theoretical_ratio, rel=1e-12), row.name


def test_list_shows_every_model_with_reference_numbers() -> None:
    res = run("--list", "--format", "json")
    assert res.returncode == 0, res.stderr
    rows = {r["model"]: r for r in json.loads(res.stdout)}
    assert sorted(rows) == list_models()
    assert (rows["xception"]["params"], rows["xception"]["macs"]) == (22_855_952, 8_357_403_496)
    assert rows["ds_cnn_s"]["input_size"] == [1, 49, 10]
    assert rows["mobilenet_v4_conv_small"]["imagenet_top1"] == imagenet_top1("mobilenet_v4_conv_small") > 70
    assert rows["ds_cnn_s"]["imagenet_top1"] is None  # no published ImageNet weights
    table = run("--list").stdout
    assert re.search(r"^mobilenet_v4_conv_small +3x224x224 +3,774,024 +186,005,568 +73\.76%$", table, flags=re.M)
    assert re.search(r"^ds_cnn_s +1x49x10 +23,180 +2,656,768 +-$", table, flags=re.M)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    out = tmp_path / "ds.png"
    res = run("--model", "ds_cnn_s", "--plot", str(out), "--format", "markdown")
    assert res.returncode == 0, res.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    assert "| stages.0.0 | 64->64 | 3x3 | 1x1 |" in res.stdout


def test_table_output_has_torchinfo_and_totals() -> None:
    res = run("--model", "ds_cnn_s", "--depth", "2", "--set", "num_classes=35")
    assert res.returncode == 0, res.stderr
    assert "Layer (type:depth-idx)" in res.stdout and "torchinfo mult-adds" in res.stdout
    assert "MACs (conv + linear, one image)  2,658,240" in res.stdout  # 2,656,768 + 64 * (35 - 12)


@pytest.mark.parametrize("args,message", [
    (["--model", "mobilenetv1"], "error: unknown model 'mobilenetv1'; did you mean 'mobilenet_v1'"),
    (["--model", "xception", "--input-size", "3", "64", "64"],
     "error: input 64x64 is smaller than the minimum 71x71 for xception"),
    (["--model", "mobilenet_v1", "--input-size", "1", "224", "224"],
     "error: expected 3 input channels (in_chans=3), got 1"),
    (["--model", "mobilenet_v1", "--set", "width_mult=-1"], "error: configs/mobilenet_v1.yaml"),
])
def test_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    res = run(*args)
    assert res.returncode == 2
    assert res.stderr.startswith(message)
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.stderr


def test_weight_bytes_per_precision() -> None:
    """ds_cnn_s by hand: int8 weights 1 byte each (stem 64x1x10x4 = 2,560; four blocks of a 3x3
    depthwise 64 x 9 and a pointwise 64 x 64 = 18,688; classifier 64 x 12 = 768) plus an fp32
    scale and bias per output channel (64 + 4 x 128 + 12 = 588 channels, 8 bytes each)."""
    s = summarize("ds_cnn_s")
    assert s.size_bytes == {"fp32": 4 * 23_180, "bf16": 2 * 23_180, "int8": 2_560 + 18_688 + 768 + 8 * 588}
    res = run("--model", "ds_cnn_s")
    assert "int8 weights (bytes)                26,720" in res.stdout


def test_compare_standard_has_a_row_per_inverted_residual() -> None:
    """An inverted residual's depthwise conv becomes a standard mid->mid conv: its row differs by
    exactly those weights, and only the separable convs carry MobileNets' eq. 5."""
    from dszoo.blocks import InvertedResidual
    from dszoo.measurement.summary import summarize

    model = create_model("mobilenet_v2_035")
    s = summarize(model, compare_standard=True)
    blocks = {n: m for n, m in model.named_modules() if isinstance(m, InvertedResidual)}
    rows = {r.name: r for r in s.standard.layers}
    assert set(blocks) <= set(rows) and len(rows) == len(blocks) + 1  # and the first stage's DS conv
    for name, block in blocks.items():
        k = block.dw.conv.kernel_size[0] * block.dw.conv.kernel_size[1]
        r = rows[name]
        assert (r.in_chs, r.mid_chs, r.out_chs) == (block.in_chs, block.mid_chs, block.out_chs)
        assert r.standard_params - r.params == block.mid_chs * (block.mid_chs - 1) * k
        assert math.isnan(r.theoretical_ratio) and r.ratio < 1
    ds = rows["stages.0.0"]
    assert ds.mid_chs is None and ds.theoretical_ratio == pytest.approx(1 / 8 + 1 / 9)
