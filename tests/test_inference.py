"""optimize_for_inference (same outputs, BN folded, fallbacks) and the benchmark script."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import small_input_size, with_random_bn_statistics
from models import create_model, list_models
from models import inference
from models.inference import fold_batchnorm, optimize_for_inference, relative_difference

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("separable", [True, False])
def test_fold_batchnorm_removes_every_bn_and_keeps_outputs(name: str, separable: bool) -> None:
    model = with_random_bn_statistics(create_model(name, separable=separable))
    x = torch.randn(2, *small_input_size(model.cfg))
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert relative_difference(folded(x), expected) <= 1e-5


@pytest.mark.parametrize("name", list_models())
def test_optimized_model_matches_on_fresh_inputs(name: str) -> None:
    model = with_random_bn_statistics(create_model(name))
    size = small_input_size(model.cfg)
    opt = optimize_for_inference(model, torch.randn(4, *size), backends=("torchscript",))
    assert opt.backend == "torchscript" and opt.compile_seconds > 0
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, *size)
            assert relative_difference(opt(x), model(x)) <= 1e-4


def test_inductor_path() -> None:
    torch._dynamo.reset()
    model = with_random_bn_statistics(create_model("ds_cnn_s"))
    opt = optimize_for_inference(model, torch.randn(8, 1, 49, 10), backends=("inductor",))
    assert opt.backend == "inductor", opt.failures
    x = torch.randn(8, 1, 49, 10)
    with torch.no_grad():
        assert relative_difference(opt(x), model(x)) <= 1e-4


def test_failing_compiler_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    real = inference._build

    def broken(backend, model, example):
        if backend in ("inductor", "torchscript"):
            raise RuntimeError(f"{backend} is broken here")
        return real(backend, model, example)

    monkeypatch.setattr(inference, "_build", broken)
    model = with_random_bn_statistics(create_model("ds_cnn_s"))
    opt = optimize_for_inference(model, torch.randn(2, 1, 49, 10))
    assert opt.backend == "eager"
    assert opt.failures == {"inductor": "RuntimeError: inductor is broken here",
                            "torchscript": "RuntimeError: torchscript is broken here"}
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules())


def test_benchmark_quick(tmp_path: Path) -> None:
    out_json, out_png = tmp_path / "b.json", tmp_path / "b.png"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--json", str(out_json),
                          "--plot", str(out_png)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out_json.read_text())
    assert data["gemm_gflops"] > 0
    variants = {(r["model"], r["variant"], r["batch"]) for r in data["rows"]}
    for model in ("ds_cnn_s", "mobilenet_v1_025"):
        assert {(model, v, b) for v in ("ours", "optimized") for b in (1, 2)} <= variants
        assert (model, "standard", 1) in variants and (model, "ours-train", 4) in variants
    for r in data["rows"]:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["ceiling_fraction"] == pytest.approx(2 * r["gmacs_per_s"] / data["gemm_gflops"])
    assert "| ds_cnn_s | optimized | 1 |" in res.stdout
    assert out_png.read_bytes()[:4] == b"\x89PNG"
