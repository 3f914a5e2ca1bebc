"""int8 and bf16 inference: the precisions depthwise-separable networks ship in.

int8 is static post-training quantization through PyTorch 2's maintained path (torchao's PT2E):
``torch.export`` -> ``prepare_pt2e`` with ``X86InductorQuantizer`` (per-channel symmetric
weights, per-tensor activations) -> calibration on the user's batches -> ``convert_pt2e`` ->
inductor with weight freezing, which fuses the quantize/dequantize pairs into int8 oneDNN
kernels. No quantized kernel is written here. bf16 folds BatchNorm, casts the weights and
compiles the same way.
"""
from __future__ import annotations

import copy
import itertools
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from .optimize import (OptimizedModel, compile_frozen, fold_batchnorm, glibc_malloc_is_tuned, relative_difference,
                       tune_glibc_malloc)

__all__ = ["CalibrationError", "bf16_supported", "calibration_batches", "cosine_similarity", "optimize_bf16",
           "quantize"]

MIN_AGREEMENT = 0.95
"""Below this cosine similarity between int8 and fp32 outputs on the calibration data, the int8
model is refused (``optimize_for_inference`` falls back to fp32 with a note): never a wrong answer."""


class CalibrationError(ValueError):
    """Calibration data that cannot calibrate the model: none, or batches of the wrong shape."""


def calibration_batches(calibration: Iterable[Any], model: nn.Module, limit: Optional[int] = None) -> list[torch.Tensor]:
    """The input batches of ``calibration`` (tensors, or ``(input, target)`` pairs as loaders give),
    each checked against the model's input checks; at most ``limit`` of them."""
    if calibration is None:
        raise CalibrationError("int8 needs calibration data: a DataLoader or list of input batches (or of (input, "
                               "target) pairs) shaped like the model's input, e.g. 256 training images")
    check: Callable[[torch.Tensor], None] = getattr(model, "check_input", lambda x: None)
    batches = []
    for k, item in enumerate(itertools.islice(calibration, limit)):
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"calibration batch {k}: expected a tensor or an (input, target) pair, got "
                                   f"{type(item).__name__}")
        try:
            check(x)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration batch {k}: {exc}") from None
        batches.append(x)
    if not batches:
        raise CalibrationError("calibration holds no batches; give a DataLoader or list of input batches shaped "
                               "like the model's input")
    return batches


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two output tensors, flattened (1.0 when both are zero)."""
    a, b = a.flatten().double(), b.flatten().double()
    norm = float(a.norm() * b.norm())
    return float(a @ b) / norm if norm else float(torch.equal(a, b))


@torch.no_grad()
def quantize(model: nn.Module, calibration: Iterable[Any], *, method: str = "ptq",
             max_batches: Optional[int] = None, compile: bool = True, tune_malloc: bool = True) -> OptimizedModel:
    """Static int8 post-training quantization of ``model`` (see the module docstring).

    Args:
        calibration: input batches, or ``(input, target)`` pairs (a DataLoader), of the shape
            the model will run at; activation ranges are observed on them.
        method: "ptq" (quantization-aware training is ``dszoo-train --qat``'s job).
        max_batches: calibrate on at most this many batches.
        compile: compile with inductor (the fast int8 kernels); without it the converted graph
            runs as PyTorch ops that quantize and dequantize: the same numbers, slowly, at once.

    Returns an ``OptimizedModel`` with ``precision == "int8"``, compiled for the first batch's
    shape, whose ``agreement`` is the cosine similarity of its outputs with the fp32 model's on
    the first calibration batch. Raises ``CalibrationError`` for missing or misshapen data, and
    ``RuntimeError`` when the int8 outputs do not agree with fp32 (below ``MIN_AGREEMENT``).
    """
    if method != "ptq":
        raise ValueError(f"unknown quantization method {method!r}; allowed: ptq")
    try:
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise ImportError("int8 quantization needs torchao: pip install 'dszoo[int8]'") from None
    original = model.eval()
    batches = calibration_batches(calibration, original, max_batches)
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    t0 = time.perf_counter()
    # A dynamic batch dimension, so that calibration batches may differ in size and so may later
    # inputs (inductor compiles once per batch size it meets, each specialised). torch.export
    # cannot keep a dimension of size 1 dynamic: a model made for batch 1 is exported for it, and
    # calibrates one example at a time.
    if len(batches[0]) == 1:
        batches = [x[i:i + 1] for x in batches for i in range(len(x))]
        dynamic = None
    else:
        dynamic = ({0: torch.export.Dim("batch", min=1, max=4096)},)
    exported = torch.export.export(copy.deepcopy(original), (batches[0],), dynamic_shapes=dynamic).module()
    quantizer = x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    for x in batches:
        prepared(x)
    converted = convert_pt2e(prepared)
    run = compile_frozen(converted) if compile else converted
    out = run(batches[0])
    seconds = time.perf_counter() - t0
    expected = original(batches[0])
    agreement = cosine_similarity(out, expected)
    if not agreement >= MIN_AGREEMENT:
        raise RuntimeError(f"int8 outputs agree with fp32 only to cosine similarity {agreement:.3f} on the calibration "
                           f"data (at least {MIN_AGREEMENT} needed)")
    result = OptimizedModel(run, "inductor" if compile else "eager", False, seconds, relative_difference(out, expected),
                            {}, malloc_tuned, getattr(original, "check_input", None), precision="int8")
    result.agreement = agreement
    return result


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN reports it."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


@torch.no_grad()
def optimize_bf16(model: nn.Module, example_input: torch.Tensor, *, tune_malloc: bool = True) -> OptimizedModel:
    """``model`` with BatchNorm folded, weights in bfloat16, compiled by inductor with freezing;
    fp32 inputs in, fp32 outputs out. ``max_relative_difference`` against fp32 is measured on
    fresh inputs and reported: bf16 keeps 8 bits of mantissa, so it is not held to fp32's 1e-4."""
    if not bf16_supported():
        raise RuntimeError("this CPU has no native bfloat16 (AVX-512 BF16 or AMX); use precision='fp32' or 'int8'")
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    original = model.eval()
    folded = fold_batchnorm(copy.deepcopy(original)).to(torch.bfloat16)
    folded = folded.to(memory_format=torch.channels_last)
    compiled = compile_frozen(folded)

    def run(x: torch.Tensor) -> torch.Tensor:
        return compiled(x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)).float()

    t0 = time.perf_counter()
    run(example_input)
    seconds = time.perf_counter() - t0
    checks = [torch.randn_like(example_input) for _ in range(2)]
    diff = max(relative_difference(run(x), original(x)) for x in checks)
    return OptimizedModel(run, "inductor", True, seconds, diff, {}, malloc_tuned, getattr(original, "check_input", None),
                          precision="bf16")
