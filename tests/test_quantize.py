"""int8 and bf16: every registered model quantizes and agrees with fp32 on calibrated data; the
compiled int8 path equals the reference graph; a trained model keeps its predictions; bad
calibration data and missing options are clear errors."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from conftest import create_shallow, mechanism_cover, run_in_process, small_input_size
from dszoo import CalibrationError, create_model, export_to_timm, optimize_for_inference, quantize
from dszoo.deployment import bf16_supported
from dszoo.deployment.export import ExportError, export_model, randomise_batchnorm_statistics
from dszoo.deployment.optimize import relative_difference
from dszoo.deployment.quantize import cosine_similarity
from dszoo.training.data import build_datasets, calibration_examples

quantize_module = importlib.import_module("dszoo.deployment.quantize")  # the package's `quantize` is the function


def _images(count: int, size: tuple[int, ...]) -> torch.Tensor:
    """Random inputs that differ as images do, each with its own brightness and colour cast: a
    random network's features of plain noise are nearly the same for every input, so its top class
    is a coin toss that int8's rounding flips, which says nothing of the quantization."""
    return torch.randn(count, *size) + 2 * torch.randn(count, size[0], 1, 1)


@pytest.mark.parametrize("name", mechanism_cover())
def test_every_model_quantizes_and_agrees_with_fp32(name: str) -> None:
    model = randomise_batchnorm_statistics(create_shallow(name))
    size = small_input_size(model.cfg)
    calibration = [_images(4, size) for _ in range(3)]
    int8 = quantize(model, calibration, compile=False)  # the reference int8 graph: same numbers, no compile
    assert int8.precision == "int8" and int8.agreement >= 0.99
    fresh = _images(4, size)
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
    with pytest.raises(ValueError, match="unknown precision 'int4'; allowed: fp32, bf16, fp16, int8"):
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


def test_fp16_is_for_gpus() -> None:
    with pytest.raises(RuntimeError, match=r"fp16 runs on a GPU; on a CPU use 'bf16' \(where it has it\) or 'int8'; "
                                           "use precision='fp32' or 'int8'"):
        optimize_for_inference(create_model("ds_cnn_s"), torch.randn(1, 1, 49, 10), precision="fp16")


@pytest.mark.parametrize("precision, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_the_half_precision_path_compiles_and_reports_its_difference(precision: str, dtype: torch.dtype,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The path a GPU takes (and a CPU with native bf16), run here with the device check passed:
    weights in the 16-bit type, fp32 in and out, the difference from fp32 measured."""
    monkeypatch.setattr(quantize_module, "half_unsupported", lambda precision, device: None)
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    x = torch.randn(2, 1, 49, 10)
    fast = optimize_for_inference(model, x, precision=precision)
    assert (fast.precision, fast.backend) == (precision, "inductor") and fast(x).dtype == torch.float32
    assert 0 < fast.max_relative_difference < 0.05
    with torch.no_grad():
        assert relative_difference(fast(x), model(x)) < 0.05


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


def test_the_int8_graph_holds_int8_weights_alone() -> None:
    """convert_pt2e leaves the fp32 weights attached beside their int8 copies; they are dropped."""
    model = create_model("ds_cnn_s")
    graph = quantize_module.int8_graph(model, [torch.randn(4, 1, 49, 10)])
    size = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    assert not [name for name, t in graph.state_dict().items() if t.dtype == torch.float32 and t.dim() == 4]
    assert size(graph.state_dict().values()) < 0.5 * size(model.state_dict().values())


def test_an_int8_export_that_lost_its_quantization_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An exporter that writes the fp32 graph agrees with the int8 one to a few percent: only the
    check of the file's layers catches it."""
    monkeypatch.setattr(quantize_module, "int8_graph", lambda model, batches: model)
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    with pytest.raises(ExportError, match=r"the int8 pt2 file computes every one of its 10 conv/linear layers in "
                                          r"floating point \(conv2d, conv2d_1, conv2d_2, \.\.\.\): it lost its quantization"):
        export_model(model, "pt2", tmp_path / "kws.pt2", (1, 49, 10), precision="int8",
                     calibration=[torch.randn(4, 1, 49, 10)])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(fmt="torchscript", precision="int8"), ValueError, "int8 exports as onnx or pt2 or pte or openvino, not "
                                                            "torchscript"),
    (dict(fmt="onnx", precision="bf16"), ValueError, r"precision 'bf16' cannot be exported; allowed: fp32, int8"),
    (dict(fmt="pt2", precision="int8"), CalibrationError, "int8 needs calibration data"),
    (dict(fmt="pt2", precision="int8", calibration=[torch.randn(1, 1, 49, 10)]), CalibrationError,
     "an int8 export calibrates on batches of at least 2 examples"),
])
def test_int8_export_errors(kwargs: dict[str, Any], error: type, message: str, tmp_path: Path) -> None:
    with pytest.raises(error, match=message):
        export_model(create_model("ds_cnn_s"), out=tmp_path / "m", input_size=(1, 49, 10), **kwargs)


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx"], "--precision int8 needs --calibration DATASET (digits, imagefolder"),
    (["--format", "torchscript", "--calibration", "digits"],
     "--precision int8 exports as onnx or pt2 or pte or openvino, not --format"),
])
def test_export_command_int8_options(args: list[str], message: str, tmp_path: Path) -> None:
    res = run_in_process("export", ["--model", "ds_cnn_s", "--precision", "int8", "--out", str(tmp_path / "m.x"), *args])
    assert res.returncode == 2 and res.stderr.startswith(f"error: {message}"), res.stderr
    res = run_in_process("export", ["--model", "ds_cnn_s", "--format", "onnx", "--calibration", "digits",
                                    "--out", str(tmp_path / "m.onnx")])
    assert res.returncode == 2 and "--calibration and --data-dir calibrate int8 exports; add --precision int8" in res.stderr


def test_timm_weights_round_trip_keeps_int8_agreement(default_run: tuple[Path, Any], tmp_path: Path) -> None:
    """The digits-trained weights through timm's MobileNetV1 (the same logits) and back into a new
    model (the same tensors): its int8 model, calibrated on 256 training images, predicts the
    fp32 class on >= 99% of the held-out split."""
    from safetensors.torch import save_file
    from timm.models.efficientnet import _gen_mobilenet_v1  # timm registers width 1.0 only; same generator

    out, trained = default_run
    assert trained.returncode == 0, trained.stderr
    ours = create_model("mobilenet_v1_025", pretrained=out / "best.pt", num_classes=10, input_size=(1, 32, 32)).eval()
    theirs = _gen_mobilenet_v1("mobilenetv1_025", 0.25, in_chans=1, num_classes=10).eval()
    theirs.load_state_dict(export_to_timm(ours), strict=True)
    data = build_datasets("digits", ours.pretrained_cfg)
    x, _ = data.val.tensors
    with torch.no_grad():
        assert torch.allclose(theirs(x), ours(x), rtol=1e-5, atol=1e-5)
    save_file(theirs.state_dict(), tmp_path / "timm.safetensors")
    back = create_model("mobilenet_v1_025", pretrained=tmp_path / "timm.safetensors", num_classes=10,
                        input_size=(1, 32, 32)).eval()
    assert all(torch.equal(a, b) for a, b in zip(back.state_dict().values(), ours.state_dict().values()))
    int8 = quantize(back, calibration_examples(data.train, 256), compile=False)  # the reference graph: same numbers
    with torch.no_grad():
        agreement = (int8(x).argmax(1) == back(x).argmax(1)).float().mean().item()
    assert len(x) == 360 and agreement >= 0.99


def test_quantization_aware_training_writes_an_int8_model(qat_run: tuple[Path, Any]) -> None:
    """--qat fine-tunes the main job's model with fake int8 and writes int8.pt2, whose top-1 on
    the held-out split is the one the run reports, within a point of the fake-quantized model's."""
    importlib.import_module("torchao.quantization.pt2e")  # registers the quantize ops int8.pt2 holds

    run, res = qat_run
    assert res.returncode == 0, res.stderr
    fake = float(res.stdout.split("best val_top1 ")[1].split("%")[0])  # the fake-quantized best.pt's
    line = next(t for t in res.stdout.splitlines() if t.startswith("int8 (quantization-aware"))
    reported = float(line.split("val_top1 ")[1].split("%")[0])
    assert abs(reported - fake) <= 1.0
    model = create_model("mobilenet_v1_025", num_classes=10, input_size=(1, 32, 32))
    x, y = build_datasets("digits", model.pretrained_cfg).val.tensors
    with open(run / "int8.pt2", "rb") as fh:
        int8 = torch.export.load(fh).module()
    with torch.no_grad():
        assert round(100.0 * (int8(x).argmax(1) == y).float().mean().item(), 2) == reported
    assert sorted(p.name for p in run.iterdir()) == ["args.json", "best.pt", "curves.png", "int8.pt2", "last.pt",
                                                     "metrics.csv"]


def _qat_graph_of_ds_cnn_s() -> tuple[Any, torch.Tensor]:
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    x = torch.randn(8, 1, 49, 10)
    return quantize_module.QuantizationAwareModel(model, x), x


def test_qat_rewrites_conv_batchnorm_only_for_the_convolutions_the_graph_has(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchao's conv-BatchNorm fusion (prepare) and folding (convert) run for conv2d alone on a
    network of conv2d layers, and torchao's own helpers are back in place afterwards."""
    from torchao.quantization.pt2e import qat_utils

    ran: dict[str, list[str]] = {"fuse": [], "fold": []}
    spies = {}
    for step in ran:
        def spy(m: Any, conv_fn: Any, *args: Any, _step: str = step, **kwargs: Any) -> Any:
            ran[_step].append(conv_fn.__name__)
            return m
        spies[step] = spy
        monkeypatch.setattr(qat_utils, f"_{step}_conv_bn_qat_helper", spy)
    qat, x = _qat_graph_of_ds_cnn_s()
    qat.train()
    qat(x)
    qat.convert()
    assert ran == {"fuse": ["conv2d"], "fold": ["conv2d"]}
    assert qat_utils._fuse_conv_bn_qat_helper is spies["fuse"] and qat_utils._fold_conv_bn_qat_helper is spies["fold"]


def test_torchaos_pattern_graphs_are_exported_once_a_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare exports torchao's 3 conv2d fusion patterns, the first switch between training and
    evaluation its 6 dropout and BatchNorm patterns, the first conversion its 24 folding patterns;
    then switches, a second conversion and post-training quantization export none, and the
    second conversion gives the same int8 graph, to the bit. The 27 conv-BatchNorm patterns are
    traced without TorchDynamo into the graphs torchao's own strict export makes, to their code."""
    from torchao.quantization.pt2e import qat_utils, utils

    exports: list[tuple] = []  # (name, how, pattern, example inputs, is_cuda, kwargs, graph's code)
    spies = {}
    torchaos_export = utils._get_aten_graph_module_for_pattern

    def spy(how: str, real: Callable) -> Callable:
        def counting(pattern: Any, example_inputs: tuple, is_cuda: bool = False, **kwargs: Any) -> Any:
            graph = real(pattern, example_inputs, is_cuda, **kwargs)
            exports.append((getattr(pattern, "fn", pattern).__name__, how, pattern, example_inputs, is_cuda, kwargs,
                            graph.code))
            return graph
        return counting
    for module in (qat_utils, utils):  # qat_utils holds its own binding of the name
        spies[module] = spy("strict", module._get_aten_graph_module_for_pattern)
        monkeypatch.setattr(module, "_get_aten_graph_module_for_pattern", spies[module])
    monkeypatch.setattr(quantize_module, "_traced_pattern_graph", spy("traced", quantize_module._traced_pattern_graph))
    monkeypatch.setattr(quantize_module, "_PATTERN_GRAPHS", {})
    made = lambda: [(name, how) for name, how, *_ in exports]  # noqa: E731
    qat, x = _qat_graph_of_ds_cnn_s()
    assert made() == [("_conv_bn_pattern", "traced"), ("_qat_conv_bn_pattern", "traced"),
                      ("_qat_conv_bn_pattern_no_conv_bias", "traced")]
    qat.train()
    assert made()[3:] == [(name, "strict") for name in ["dropout_eval", "dropout_train"] * 2 + ["bn_train", "bn_eval"]]
    qat(x)
    qat.eval()
    qat.train()
    first = qat.convert()
    assert len(exports) == 3 + 6 + 24 and len(quantize_module._PATTERN_GRAPHS) == 33
    assert made()[9:] == [("_quantized_qat_conv_bn_pattern", "traced"),
                          ("_folded_quantized_qat_conv_bn_pattern", "traced")] * 12
    second = qat.convert()
    quantize_module.quantize(randomise_batchnorm_statistics(create_model("ds_cnn_s")), [x], compile=False)
    assert len(exports) == 33 and second.code == first.code
    assert torch.equal(second(x), first(x))
    for name, how, pattern, example_inputs, is_cuda, kwargs, code in exports[:3] + exports[9:]:
        assert torchaos_export(pattern, example_inputs, is_cuda, **kwargs).code == code, name
    assert all(m._get_aten_graph_module_for_pattern is spy for m, spy in spies.items())  # torchao's names back


def test_a_pattern_that_cannot_be_traced_without_dynamo_is_exported_by_torchao(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where tracing without TorchDynamo fails, torchao's own export makes the graph (and is kept)."""
    def fails(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("untraceable")
    monkeypatch.setattr(quantize_module, "_traced_pattern_graph", fails)
    monkeypatch.setattr(quantize_module, "_PATTERN_GRAPHS", {})
    calls = []
    exported = quantize_module._exported_once(lambda *args, **kwargs: calls.append(args) or "torchao's graph",
                                              without_dynamo=True)

    def pattern(x: torch.Tensor) -> torch.Tensor:
        return x * 2
    assert exported(pattern, (torch.ones(2),), False) == "torchao's graph" and len(calls) == 1
    assert exported(pattern, (torch.ones(2),), False) == "torchao's graph" and len(calls) == 1


def test_a_pattern_is_known_by_its_options_and_input_shapes_or_not_kept() -> None:
    def make(flag: Any) -> Callable:
        def pattern(x: torch.Tensor) -> torch.Tensor:
            return x + 1 if flag is True else x
        return pattern
    key = quantize_module._pattern_key
    one, shapes = (torch.randn(1, 1, 3, 3),), {"w": torch.randn(1)}
    assert key(make(True), one, False, shapes) == key(make(True), (torch.zeros(1, 1, 3, 3),), False, {"w": torch.ones(1)})
    assert key(make(True), one, False, shapes) != key(make(False), one, False, shapes)
    assert key(make(True), one, False, shapes) != key(make(True), (torch.randn(1, 1, 3),), False, shapes)
    assert key(make(True), one, False, shapes) != key(make(True), one, True, shapes)
    assert key(make(torch.ones(1)), one, False, shapes) is None  # closes over a tensor: exported every time
    assert key(torch.nn.Identity(), one, False, shapes) is None  # no function to read


def test_torchaos_rewrite_for_an_absent_kind_of_convolution_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the skipping of test_qat_rewrites_conv_batchnorm_only_for_the_convolutions_the_graph_has
    relies on: torchao's fusion and folding helpers, run for
    each kind of convolution ds_cnn_s does not contain, leave its graph's code as it was. Their
    pattern graphs traced without TorchDynamo, as quantization traces them (the graphs torchao's
    strict export makes: test_torchaos_pattern_graphs_are_exported_once_a_process)."""
    from torchao.quantization.pt2e import qat_utils

    monkeypatch.setattr(qat_utils, "_get_aten_graph_module_for_pattern", quantize_module._exported_once(
        qat_utils._get_aten_graph_module_for_pattern, without_dynamo=True))
    qat, x = _qat_graph_of_ds_cnn_s()
    qat.train()
    qat(x)
    exported = quantize_module.export_for_quantization(create_model("ds_cnn_s").train(), x)
    prepared = quantize_module._pt2e().to_eval(qat.graph)
    one, two = (torch.randn(1, 1, 3), torch.randn(1, 1, 1)), (torch.randn(1, 1, 3, 3), torch.randn(1, 1, 1, 1))
    for conv_fn, example in ((torch.nn.functional.conv1d, one), (torch.nn.functional.conv_transpose1d, one),
                             (torch.nn.functional.conv_transpose2d, two)):
        code = exported.code
        fused = qat_utils._fuse_conv_bn_qat_helper(exported, conv_fn, (*example, *torch.randn(5, 1)), is_cuda=False)
        assert fused.code == code, conv_fn.__name__
        code = prepared.code
        folded = qat_utils._fold_conv_bn_qat_helper(prepared, conv_fn, (*example, *torch.randn(4, 1)), is_cuda=False)
        assert folded.code == code, conv_fn.__name__


@pytest.mark.parametrize("extra, message", [
    (["--eval-only"], "--qat trains; to evaluate a model in int8 use --eval-only --precision int8"),
    (["--ema"], "--qat fake-quantizes the exported training graph; it does not take --ema"),
    (["--amp"], "it does not take --amp"),
    (["--freeze", "backbone"], "it does not take --freeze backbone (its BatchNorm would keep training)"),
])
def test_qat_refuses_options_it_cannot_honour(extra: list[str], message: str) -> None:
    res = run_in_process("train", ["--qat", "--pretrained", "x.pt", *extra])
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_benchmark_times_int8_against_its_own_ceiling() -> None:
    """int8 rows beside the fp32 ones: their fraction is of the int8 GEMM ceiling and their
    roofline counts a quarter of the fp32 bytes; bf16 where the CPU has it, else a log line."""
    from dszoo.measurement.benchmark import roofline_ms, run_benchmarks
    from dszoo.profile import layer_traffic

    log: list[str] = []
    result = run_benchmarks(["ds_cnn_s"], batch_sizes=(2,), repeats=2, train_batch=2, backends=("eager",),
                            log=log.append, ceiling_sizes=(256,), precisions=("int8", "bf16"))
    ceilings = result["ceilings"]
    rows = {r["variant"]: r for r in result["rows"] if r["batch"] == 2}
    assert {"ours", "optimized", "int8"} <= rows.keys() and ceilings["int8"] > 0
    int8 = rows["int8"]
    assert int8["ceiling_fraction"] == pytest.approx(2 * int8["gmacs_per_s"] / ceilings["int8"])
    assert "inductor, compile" in int8["note"] and "max relative difference from fp32" in int8["note"]
    layers = layer_traffic(create_model("ds_cnn_s"), (1, 49, 10), 2).values()
    assert int8["roofline_ms"] == pytest.approx(roofline_ms([(m, b / 4) for m, b in layers], ceilings["int8"],
                                                            result["memory_gbs"]))
    assert rows["optimized"]["roofline_ms"] == pytest.approx(roofline_ms(list(layers), ceilings["fp32"],
                                                                         result["memory_gbs"]))
    if bf16_supported():
        assert "bf16" in rows and ceilings["bf16"] > 0
    else:
        assert "bf16" not in rows and "bf16: not timed, this CPU has no native bfloat16 (AVX-512 BF16 or AMX)" in log


def test_int8_calibrated_on_the_wrong_data_falls_back_to_fp32(default_run: tuple[Path, Any]) -> None:
    """The trained digits model calibrated on zeros: judged on inputs held out of calibration
    (here the example batch), int8 disagrees with fp32 and the result is fp32 with the reason;
    on real digits it stays int8. Misshapen and empty batches are CalibrationErrors; the
    caller's own errors from a calibration generator pass through unchanged."""
    out, trained = default_run
    assert trained.returncode == 0, trained.stderr
    model = create_model("mobilenet_v1_025", pretrained=out / "best.pt", num_classes=10, input_size=(1, 32, 32)).eval()
    x, _ = build_datasets("digits", model.pretrained_cfg).val.tensors
    with pytest.warns(UserWarning, match="int8 quantization failed, using fp32 instead"):
        zeros = optimize_for_inference(model, x[:16], precision="int8", calibration=[torch.zeros(64, 1, 32, 32)])
    assert zeros.precision == "fp32" and "inputs held out of calibration" in zeros.failures["int8"]
    real = optimize_for_inference(model, x[:16], precision="int8", calibration=[x[16:80]])
    assert real.precision == "int8" and real.agreement >= 0.95
    with pytest.raises(CalibrationError, match=r"calibration batch 1: inputs of shape \(1, 16, 16\), batch 0's are "
                                               r"\(1, 32, 32\)"):
        quantize(model, [x[:4], torch.randn(4, 1, 16, 16)])
    with pytest.raises(CalibrationError, match="calibration batch 0 is empty"):
        quantize(model, [x[:0]])

    def failing():
        yield x[:4]
        raise KeyError("the caller's own bug")

    with pytest.raises(KeyError, match="the caller's own bug"):
        optimize_for_inference(model, x[:4], precision="int8", calibration=failing())


def test_top1_agreement_forgives_only_near_ties() -> None:
    """A row whose top class changes counts against int8 unless the row's largest int8 error is
    at most 3% of fp32's logit range (a near-tie then: the two classes were within twice that)."""
    expected = torch.tensor([[3.0, 1.0, 0.0], [1.00, 1.01, 0.0], [2.0, 0.0, 1.9]])
    out = torch.tensor([[2.9, 1.1, 0.0],  # the same top class
                        [1.02, 1.00, 0.0],  # a near-tie swapped by an error of 0.02 (2% of the range)
                        [1.0, 0.0, 1.9]])  # changed by an error of 1.0 (50% of the range)
    assert float(quantize_module.top1_agreement(out, expected)) == pytest.approx(2 / 3)
    assert float(quantize_module.top1_agreement(out[:2], expected[:2])) == 1.0
    assert float(quantize_module.top1_agreement(out[2:], expected[2:])) == 0.0
