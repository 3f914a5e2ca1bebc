"""The GPU paths' logic, tested where CI runs (a CPU): precision selection, the gradient scaler
and its checkpointing, tolerances and compile modes per device, dynamic=False on every compile
path, and the benchmark's device option."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_in_process
from dszoo import create_model, optimize_for_inference, quantize
from dszoo.deployment.export import randomise_batchnorm_statistics
from dszoo.deployment.optimize import CUDA_TF32_TOLERANCE, device_plan
from dszoo.training import TrainConfig, loop, runtime, train, uses_channels_last

QUICK = dict(model="mobilenet_v1_025", img_size=16, warmup_epochs=0, quiet=2, max_batches=2)


@pytest.mark.parametrize("device, bf16, expected", [("cpu", False, torch.bfloat16), ("cuda", True, torch.bfloat16),
                                                    ("cuda", False, torch.float16)])
def test_amp_picks_bf16_where_it_can(device: str, bf16: bool, expected: torch.dtype) -> None:
    assert runtime.amp_dtype(device, bf16) == expected


def test_channels_last_is_the_default_on_cpu_and_gpu() -> None:
    cfg = TrainConfig()
    assert uses_channels_last(cfg, torch.device("cpu")) and uses_channels_last(cfg, torch.device("cuda"))
    assert not uses_channels_last(TrainConfig(channels_last=False), torch.device("cuda"))


def test_the_float16_scaler_is_checkpointed_and_resumed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where --amp means float16 (a GPU without bf16) a GradScaler scales the loss; its state
    goes into the checkpoint and comes back on resume. Exercised on the CPU's float16 autocast."""
    monkeypatch.setattr(runtime, "_amp_dtype", lambda device: torch.float16)
    assert runtime.grad_scaler(torch.device("cpu"), amp=True).is_enabled()
    assert not runtime.grad_scaler(torch.device("cpu"), amp=False).is_enabled()
    train(TrainConfig(**QUICK, epochs=1, amp=True, out_dir=str(tmp_path)))
    saved = torch.load(tmp_path / "last.pt", weights_only=True)["scaler"]
    assert saved["scale"] > 0 and "_growth_tracker" in saved
    restored: dict[str, Any] = {}
    real = loop._restore

    def spy(run: Any, trainer: Any, ckpt: Any, result: Any) -> int:
        epoch = real(run, trainer, ckpt, result)
        restored.update(trainer.scaler.state_dict())
        return epoch

    monkeypatch.setattr(loop, "_restore", spy)
    train(TrainConfig(resume=str(tmp_path / "last.pt"), epochs=2, quiet=2))
    assert restored["scale"] == saved["scale"] and restored["_growth_tracker"] == saved["_growth_tracker"]


def test_device_plan() -> None:
    backends = ("onednn_graph", "inductor", "torchscript", "eager")
    assert device_plan("cpu", 1, backends, 1e-4, False, None) == (backends, 1e-4, None)
    assert device_plan("cuda", 1, backends, 1e-4, True, None) == (("inductor", "eager"), CUDA_TF32_TOLERANCE,
                                                                   "reduce-overhead")
    assert device_plan("cuda", 256, backends, 1e-4, False, None) == (("inductor", "eager"), 1e-4, None)
    assert device_plan("cuda", 1, ("onednn_graph",), 1e-4, False, "max-autotune") == (("inductor",), 1e-4,
                                                                                       "max-autotune")


def test_every_compile_path_passes_dynamic_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All zoo models share ZooNet.forward: without dynamic=False dynamo recompiles the second
    model it meets with dynamic shapes. torch.compile is recorded and returns the model as it is."""
    calls: list[dict[str, Any]] = []

    def recording_compile(model: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return model

    monkeypatch.setattr(torch, "compile", recording_compile)
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    x = torch.randn(2, 1, 49, 10)
    optimize_for_inference(model, x, backends=("inductor",), memory_format="contiguous")
    optimize_for_inference(model, x, backends=("inductor",), memory_format="contiguous", compile_mode="max-autotune")
    quantize(model, [x])
    train(TrainConfig(**QUICK, epochs=1, compile=True, out_dir=str(tmp_path)))
    assert len(calls) == 4 and all(c.get("dynamic") is False for c in calls)
    assert [c.get("mode") for c in calls[:2]] == [None, "max-autotune"]


def test_benchmark_device_option_on_a_machine_without_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the message below is for machines without one")
    res = run_in_process("benchmark", ["--device", "cuda"])
    assert res.returncode == 2 and res.stderr.startswith("error: --device cuda: no CUDA device is available")


def test_gpu_benchmark_plumbing_runs_on_a_cpu() -> None:
    """The GPU benchmark's code on a CPU (host clock, no compiling): every eager variant of ours
    and timm's at a batch, the training steps, throughput from the medians, rooflines against the
    ceiling and bytes of each row's precision, and its table."""
    from dszoo.commands.benchmark import device_markdown
    from dszoo.measurement.benchmark import roofline_ms
    from dszoo.measurement.device_benchmark import run_device_benchmarks
    from dszoo.profile import layer_traffic

    log: list[str] = []
    result = run_device_benchmarks(["mobilenet_v1"], torch.device("cpu"), batch_sizes=(2,), train_batch=2, repeats=2,
                                   compile=False, log=log.append, matmul_size=128, copy_mib=4, input_size=32)
    rows = {(r["variant"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {("ours", 2), ("timm", 2), ("ours-bf16-cl", 2), ("timm-bf16-cl", 2), ("ours-train", 2),
                         ("timm-train", 2)}
    assert result["device"] == "cpu" and result["low_precision"] == "bfloat16"
    layers = list(layer_traffic(create_model("mobilenet_v1", input_size=32), (3, 32, 32), 2).values())
    ceilings, bandwidth = result["ceilings_gflops"], result["copy_gbs"]
    for (variant, batch), r in rows.items():
        assert r["images_per_s"] == pytest.approx(batch / (r["median_ms"] / 1e3))
        if variant.endswith("-train"):
            assert r["roofline_ms"] is None and "SGD step, autocast torch.bfloat16, channels-last" in r["note"]
        else:
            half = "bf16" in variant
            moved = [(m, b * (0.5 if half else 1.0)) for m, b in layers]
            assert r["roofline_ms"] == pytest.approx(roofline_ms(moved, ceilings["bf16" if half else "fp32"], bandwidth))
    table = device_markdown(result)
    assert table.count("\n| mobilenet_v1 |") == 6 and "medians of 2 runs timed with CUDA events" in table


def test_gpu_timer_reads_cuda_events(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU a call is timed between two CUDA events, waiting for the second (elapsed_time is
    in milliseconds)."""
    from dszoo.measurement.device_benchmark import device_timer

    calls: list[str] = []

    class Event:
        made = 0

        def __init__(self, enable_timing: bool) -> None:
            assert enable_timing
            self.name = "start" if Event.made % 2 == 0 else "end"
            Event.made += 1

        def record(self) -> None:
            calls.append(f"{self.name}.record")

        def synchronize(self) -> None:
            calls.append(f"{self.name}.synchronize")

        def elapsed_time(self, end: "Event") -> float:
            return 12.5

    monkeypatch.setattr(torch.cuda, "Event", Event)
    seconds = device_timer(torch.device("cuda"))(lambda: calls.append("call"))
    assert seconds == 0.0125 and calls == ["start.record", "call", "end.record", "end.synchronize"]


def test_gpu_benchmark_refuses_cpu_options() -> None:
    res = run_in_process("benchmark", ["--device", "cuda", "--quick", "--precisions", "int8"])
    assert res.returncode == 2 and res.stderr.strip() == ("error: --device cuda does not take --precisions, --quick "
                                                           "(CPU benchmark options)")


def test_int8_off_the_cpu_is_refused_with_what_to_do() -> None:
    """int8 is torchao's x86 kernels: a model elsewhere (a GPU; here the meta device stands in)
    is refused before anything is traced, saying how to get int8 or what to use instead."""
    model = create_model("mobilenet_v1_025", input_size=32).to("meta")
    what_to_do = r"int8 runs on the CPU .* on meta: call model.cpu\(\) .* precision='bf16' or 'fp16' on a GPU"
    with pytest.raises(ValueError, match=what_to_do):
        optimize_for_inference(model, torch.randn(2, 3, 32, 32, device="meta"), precision="int8",
                               calibration=[torch.randn(4, 3, 32, 32)])
    with pytest.raises(ValueError, match="on meta"):
        quantize(model, [torch.randn(4, 3, 32, 32)])
