"""int8 and bf16: every registered model quantizes and agrees with fp32 on calibrated data; the
compiled int8 path equals the reference graph; a trained model keeps its predictions; bad
calibration data and missing options are clear errors."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_in_process, small_input_size
from models import CalibrationError, create_model, list_models, optimize_for_inference, quantize
from models.deployment import bf16_supported
from models.deployment.export import randomise_batchnorm_statistics
from models.deployment.quantize import cosine_similarity


@pytest.mark.parametrize("name", list_models())
def test_every_model_quantizes_and_agrees_with_fp32(name: str) -> None:
    model = randomise_batchnorm_statistics(create_model(name))
    size = small_input_size(model.cfg)
    calibration = [torch.randn(4, *size) for _ in range(3)]
    int8 = quantize(model, calibration, compile=False)  # the reference int8 graph: same numbers, no compile
    assert int8.precision == "int8" and int8.agreement >= 0.99
    fresh = torch.randn(4, *size)
    with torch.no_grad():
        assert cosine_similarity(int8(fresh), model(fresh)) >= 0.99


def test_compiled_int8_equals_its_reference_graph() -> None:
    model = randomise_batchnorm_statistics(create_model("mobilenet_v1_025", input_size=32))
    calibration = [(torch.randn(8, 3, 32, 32), torch.zeros(8)) for _ in range(2)]  # loader-style pairs
    fast = optimize_for_inference(model, calibration[0][0], precision="int8", calibration=calibration)
    reference = quantize(model, calibration, compile=False)
    assert (fast.precision, fast.backend, reference.backend) == ("int8", "inductor", "eager")
    x = torch.randn(8, 3, 32, 32)
    assert cosine_similarity(fast(x), reference(x)) > 0.999
    with pytest.raises(ValueError, match=r"expected 3 input channels"):  # the model's own checks still hold
        fast(torch.randn(8, 1, 32, 32))


@pytest.mark.parametrize("calibration, message", [
    (None, "int8 needs calibration data"),
    ([], "calibration holds no batches"),
    ([torch.randn(2, 1, 32, 32)], r"calibration batch 0: expected 3 input channels \(in_chans=3\), got 1"),
    ([torch.randn(2, 3, 32, 32), "text"], "calibration batch 1: expected a tensor or an"),
])
def test_bad_calibration_is_a_clear_error(calibration: object, message: str) -> None:
    model = create_model("mobilenet_v1_025", input_size=32)
    with pytest.raises(CalibrationError, match=message):
        optimize_for_inference(model, torch.randn(2, 3, 32, 32), precision="int8", calibration=calibration)


def test_unknown_precision_and_method() -> None:
    model = create_model("ds_cnn_s")
    with pytest.raises(ValueError, match="unknown precision 'int4'; allowed: fp32, bf16, int8"):
        optimize_for_inference(model, torch.randn(1, 1, 49, 10), precision="int4")
    with pytest.raises(ValueError, match="unknown quantization method 'qat'; allowed: ptq"):
        quantize(model, [torch.randn(1, 1, 49, 10)], method="qat")


def test_a_model_that_cannot_be_quantized_falls_back_to_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_export(*args: object, **kwargs: object) -> None:
        raise RuntimeError("export cannot take this op")

    monkeypatch.setattr(torch.export, "export", broken_export)
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    x = torch.randn(2, 1, 49, 10)
    with pytest.warns(UserWarning, match=r"int8 quantization failed, using fp32 instead \(RuntimeError: export cannot"):
        fast = optimize_for_inference(model, x, precision="int8", calibration=[x], backends=("eager",))
    assert fast.precision == "fp32" and fast.failures["int8"] == "RuntimeError: export cannot take this op"
    with torch.no_grad():
        assert torch.allclose(fast(x), model(x), rtol=1e-4, atol=1e-6)


def test_bf16_where_the_cpu_has_it() -> None:
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    x = torch.randn(4, 1, 49, 10)
    if not bf16_supported():
        with pytest.raises(RuntimeError, match="this CPU has no native bfloat16"):
            optimize_for_inference(model, x, precision="bf16")
        return
    fast = optimize_for_inference(model, x, precision="bf16")
    assert fast.precision == "bf16" and fast.max_relative_difference < 0.05
    assert fast(x).dtype == torch.float32


@pytest.mark.xdist_group(name="default_run")  # one worker trains it, once
def test_eval_only_int8_keeps_a_trained_models_predictions(default_run: tuple[Path, Any]) -> None:
    """The main job's model on digits, the real held-out split: int8 calibrated on 64 training images."""
    out, trained = default_run
    assert trained.returncode == 0, trained.stderr
    res = run_in_process("train", ["--eval-only", "--pretrained", str(out / "best.pt"), "--precision", "int8",
                                   "--calibration-images", "64"])
    assert res.returncode == 0, res.stderr
    fp32_line, int8_line = res.stdout.splitlines()[-2:]
    fp32 = float(fp32_line.split("val_top1 ")[1].split("%")[0])
    int8 = float(int8_line.split("val_top1 ")[1].split("%")[0])
    agreement = float(int8_line.split("same prediction as fp32 on ")[1].split("%")[0])
    assert "calibrated on 64 training examples" in int8_line
    assert abs(int8 - fp32) <= 1.0 and agreement >= 98.0
    res = run_in_process("train", ["--precision", "int8"])
    assert res.returncode == 2 and "--precision int8 evaluates a model: it needs --eval-only" in res.stderr
