"""``optimize_for_inference``: the fastest correct way to run a model on this machine.

Steps: keep freed memory for reuse (glibc malloc), fold every BatchNorm into the conv before
it, choose the memory format that runs faster for this model (measured), then compile with the
best path that works - a traced, frozen TorchScript graph run through oneDNN Graph fusion,
else inductor with freezing, else a scripted, frozen TorchScript graph, else the BN-folded
eager model - checking each against the original on fresh random inputs. Compile time is
measured and reported.
"""
from __future__ import annotations

import copy
import statistics
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

# the machinery, re-exported here where it has always been importable from
from .backends import (BACKENDS, CUDA_TF32_TOLERANCE, OptimizedModel, build_backend, compile_frozen, cuda_tf32_enabled,
                       device_plan, failure_reason, fold_batchnorm, glibc_malloc_is_tuned, onednn_graph_fusion,
                       relative_difference, say_fallback, tune_glibc_malloc)
from ..profile import timed
from .quantize import CalibrationError, calibration_batches, check_int8_device, optimize_half, quantize

__all__ = ["BACKENDS", "CUDA_TF32_TOLERANCE", "PRECISIONS", "OptimizedModel", "compile_frozen", "cuda_tf32_enabled",
           "device_plan", "fold_batchnorm", "glibc_malloc_is_tuned", "onednn_graph_fusion", "optimize_for_inference",
           "relative_difference", "tune_glibc_malloc"]

PRECISIONS = ("fp32", "bf16", "fp16", "int8")


@torch.no_grad()
def optimize_for_inference(
    model: nn.Module,
    example_input: torch.Tensor,
    *,
    precision: str = "fp32",
    calibration: Any = None,
    backends: Sequence[str] = BACKENDS,
    tolerance: float = 1e-4,
    memory_format: Optional[str] = None,
    tune_malloc: bool = True,
    compile_mode: Optional[str] = None,
    verbose: bool = False,
) -> OptimizedModel:
    """A module giving ``model``'s outputs (max relative difference <= ``tolerance``), fast.

    Args:
        example_input: a batch of the shape you will run (compiled graphs specialise on it).
        precision: "fp32" (the default and the 1e-4 contract), "bf16" (on GPUs that have it and
            CPUs that run it natively) or "fp16" (GPUs): their measured difference is reported,
            not held to ``tolerance`` (``dszoo.deployment.quantize.optimize_half``); or "int8"
            (static quantization, ``dszoo.deployment.quantize``; needs ``calibration``). An
            int8 model that cannot be made, or whose outputs do not agree with fp32, falls back
            to fp32 with the reason in ``failures["int8"]``.
        calibration: for int8, input batches or ``(input, target)`` pairs of the shape of
            ``example_input``.
        backends: fp32 only: tried in order; the first that compiles and matches wins ("eager"
            never fails).
        memory_format: "channels_last" or "contiguous"; by default the faster one, measured.
        tune_malloc: call ``tune_glibc_malloc`` (process-wide) so that activations reuse freed
            memory instead of page-faulting fresh memory on every call.
        compile_mode: torch.compile's ``mode`` for the inductor backend ("max-autotune",
            "reduce-overhead" for CUDA graphs); on a GPU small batches default to CUDA graphs.
        verbose: print a line to stderr for each backend that is passed over, with its whole reason
            (they are always in ``result.failures``).

    On a GPU (``example_input`` on CUDA): inductor, channels-last by default, and with TF32 on
    (cuDNN's default) the tolerance is ``CUDA_TF32_TOLERANCE``; ``result.tf32`` says which.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; allowed: {', '.join(PRECISIONS)}")
    if example_input.dim() == 0 or len(example_input) == 0:
        raise ValueError(f"example_input of shape {tuple(example_input.shape)} holds no examples; pass a batch of the "
                         "shape you will run (at least one example)")
    if precision != "fp32":
        if precision in ("bf16", "fp16"):
            return optimize_half(model, example_input, precision, tune_malloc=tune_malloc)
        check_int8_device(model, example_input)
        batches = calibration_batches(calibration, model.eval())  # the caller's own errors pass through
        try:
            return quantize(model, batches, tune_malloc=tune_malloc, example_input=example_input)
        except (CalibrationError, ImportError):
            raise
        except Exception as exc:  # noqa: BLE001 - an op the quantizer or export cannot take: fp32 instead
            reason = failure_reason(exc)
            warnings.warn(f"int8 quantization failed, using fp32 instead ({reason})", stacklevel=2)
            fallback = optimize_for_inference(model, example_input, backends=backends, tolerance=tolerance,
                                              memory_format=memory_format, tune_malloc=tune_malloc, verbose=verbose)
            fallback.failures["int8"] = reason
            return fallback
    tf32 = example_input.is_cuda and cuda_tf32_enabled()
    backends, tolerance, compile_mode = device_plan(example_input.device.type, len(example_input), backends, tolerance,
                                                    tf32, compile_mode)
    if memory_format is None and example_input.is_cuda:
        memory_format = "channels_last"
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    original = model.eval()
    folded = fold_batchnorm(copy.deepcopy(original).eval())
    if memory_format is None:
        cl = copy.deepcopy(folded).to(memory_format=torch.channels_last)
        x_cl = example_input.contiguous(memory_format=torch.channels_last)
        channels_last = statistics.median(timed(lambda: cl(x_cl), 3, warmup=1)) < statistics.median(
            timed(lambda: folded(example_input), 3, warmup=1)
        )
    elif memory_format in ("channels_last", "contiguous"):
        channels_last = memory_format == "channels_last"
    else:
        raise ValueError(f"memory_format must be 'channels_last' or 'contiguous', got {memory_format!r}")
    if channels_last:
        folded = folded.to(memory_format=torch.channels_last)
    checks = [torch.randn_like(example_input) for _ in range(2)]
    expected = [original(x) for x in checks]
    failures: dict[str, str] = {}
    fmt: Callable[[torch.Tensor], torch.Tensor] = (
        (lambda x: x.contiguous(memory_format=torch.channels_last)) if channels_last else (lambda x: x)
    )
    for backend in list(backends) + ([] if "eager" in backends else ["eager"]):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; allowed: {', '.join(BACKENDS)}")
        t0 = time.perf_counter()
        try:
            runner = build_backend(backend, folded, fmt(example_input), compile_mode)
            runner(fmt(example_input))  # compile now, so compile time is measured here
            seconds = time.perf_counter() - t0
            diff = max(relative_difference(runner(fmt(x)), y) for x, y in zip(checks, expected))
        except Exception as exc:  # a compiler that fails falls through to the next path
            failures[backend] = failure_reason(exc)
            say_fallback(verbose, backend, failures[backend])
            continue
        if diff <= tolerance:
            result = OptimizedModel(runner, backend, channels_last, seconds, diff, failures, malloc_tuned,
                                    getattr(original, "check_input", None))
            result.tf32 = tf32
            return result
        failures[backend] = f"outputs differ by {diff:.2e} (relative), above {tolerance:g}"
        say_fallback(verbose, backend, failures[backend])
    raise RuntimeError(f"no backend reproduced the model's outputs: {failures}")
