"""The CUDA paths on a real GPU: ``--amp`` training, ``optimize_for_inference`` in fp32, bf16
and fp16 with CUDA graphs, and int8, which runs on the CPU only, refusing or falling back
cleanly. Marked ``cuda``; they need a GPU and are skipped without one (their logic is tested on
the CPU in test_device_logic.py). Run them with ``pytest -m cuda``."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dszoo import create_model, optimize_for_inference
from dszoo.deployment.export import randomise_batchnorm_statistics
from dszoo.deployment.optimize import CUDA_TF32_TOLERANCE, relative_difference
from dszoo.training import TrainConfig, train

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m cuda on one)")]


def _model(name: str = "mobilenet_v2_035", size: int = 96) -> torch.nn.Module:
    return randomise_batchnorm_statistics(create_model(name, input_size=size)).cuda().eval()


@pytest.mark.xfail(strict=True, reason="measured on an H200 (torch 2.11): epoch 2's training loss 2.5418 resumed "
                   "against 2.5683 uninterrupted, with --deterministic; the cause is not found yet (docs/gpu.md)")
def test_amp_training_on_the_gpu_resumes_exactly(tmp_path: Path) -> None:
    """``--amp`` (bf16 autocast on this GPU) for two epochs, and one epoch then ``--resume``:
    the same losses to the bit with ``--deterministic``, the CUDA random state checkpointed."""
    quick = dict(model="mobilenet_v1_025", img_size=32, warmup_epochs=0, quiet=2, max_batches=3, amp=True,
                 deterministic=True)
    whole = train(TrainConfig(**quick, epochs=2, out_dir=str(tmp_path / "whole")))
    train(TrainConfig(**quick, epochs=1, out_dir=str(tmp_path / "split")))
    ckpt = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and "cuda" in ckpt["rng"]
    assert next(iter(ckpt["model"].values())).device.type == "cpu"
    resumed = train(TrainConfig(**quick, epochs=2, resume=str(tmp_path / "split" / "last.pt")))
    for key in ("train_loss", "val_loss", "val_top1"):
        assert resumed.history[1][key] == whole.history[1][key], key


@pytest.mark.parametrize("batch", [2, 32])
def test_fp32_optimized_matches_eager_within_the_tf32_tolerance(batch: int) -> None:
    model = _model()
    x = torch.randn(batch, 3, 96, 96, device="cuda")
    fast = optimize_for_inference(model, x)
    assert fast.backend == "inductor", fast.failures
    with torch.no_grad():
        fast(torch.randn_like(x))  # another input first: the result below must be x's own
        got, want = fast(x), model(x)
    assert relative_difference(got, want) <= (CUDA_TF32_TOLERANCE if fast.tf32 else 1e-4)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_on_the_gpu_reports_its_difference(precision: str) -> None:
    model = _model()
    x = torch.randn(4, 3, 96, 96, device="cuda")
    fast = optimize_for_inference(model, x, precision=precision)
    with torch.no_grad():
        diff = relative_difference(fast(x).float(), model(x))
    assert fast.precision == precision
    assert diff < 0.1 and abs(diff - fast.max_relative_difference) < 0.1


def test_cuda_graphs_replay_new_inputs_correctly() -> None:
    """A small batch runs as CUDA graphs ("reduce-overhead"): each call's result must be that
    input's, not a stale replay of the previous one."""
    model = _model("mobilenet_v1_025", 64)
    x = torch.randn(1, 3, 64, 64, device="cuda")
    fast = optimize_for_inference(model, x)
    with torch.no_grad():
        for _ in range(3):
            y = torch.randn_like(x)
            assert relative_difference(fast(y).clone(), model(y)) <= CUDA_TF32_TOLERANCE


def test_int8_on_the_gpu_is_refused_with_what_to_do() -> None:
    model = _model("mobilenet_v1_025", 64)
    batches = [torch.randn(4, 3, 64, 64, device="cuda") for _ in range(4)]
    with pytest.raises(ValueError, match=r"int8 runs on the CPU .* on cuda: call model.cpu\(\)"):
        optimize_for_inference(model, batches[0], precision="int8", calibration=batches)
