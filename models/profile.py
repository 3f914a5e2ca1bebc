"""Parameter and multiply-accumulate counts in the papers' convention.

MACs count Conv2d and Linear layers only (no bias, norm, activation or pooling), for one image.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["count_macs", "count_params", "layer_gemms", "layer_macs", "layer_traffic", "module_macs", "timed"]


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """``sum(p.numel())`` over parameters (BatchNorm running statistics are buffers, excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def module_macs(module: nn.Module, output: torch.Tensor) -> int:
    """MACs of one Conv2d or Linear call for the first image of ``output`` (0 for other layers)."""
    per_image = output[0].numel()
    if isinstance(module, nn.Conv2d):
        kh, kw = module.kernel_size
        return per_image * (module.in_channels // module.groups) * kh * kw
    if isinstance(module, nn.Linear):
        return per_image * module.in_features
    return 0


@torch.no_grad()
def _visit_layers(model: nn.Module, input_size: Sequence[int], batch: int,
                  visit: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None]) -> None:
    """Run a batch of zeros through ``model`` in eval mode, calling ``visit(name, module, input,
    output)`` for every Conv2d and Linear call."""
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(
                lambda mod, inputs, output, name=name: visit(name, mod, inputs[0], output)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(batch, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()


def layer_macs(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """MACs of every Conv2d and Linear for one image of ``input_size`` (C, H, W), by module name."""
    macs: dict[str, int] = {}

    def visit(name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> None:
        macs[name] = macs.get(name, 0) + module_macs(module, output)

    _visit_layers(model, input_size, 1, visit)
    return macs


def layer_traffic(model: nn.Module, input_size: Sequence[int], batch: int = 1) -> dict[str, tuple[int, int]]:
    """(MACs, bytes) of every Conv2d and Linear for a batch of ``batch`` images, by module name.

    Bytes are the least memory traffic of running the layer on its own: reading its input and
    weights once and writing its output once (activation and folded BatchNorm fused into it).
    With a machine's GEMM rate and memory bandwidth this gives each layer's roofline time,
    max(2 x MACs / FLOP/s, bytes / bandwidth) (Williams et al., "Roofline", CACM 2009).
    """
    traffic: dict[str, tuple[int, int]] = {}

    def visit(name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> None:
        tensors = [x, output, *module.parameters(recurse=False)]
        macs, nbytes = traffic.get(name, (0, 0))
        traffic[name] = (macs + module_macs(module, output) * batch,
                         nbytes + sum(t.numel() * t.element_size() for t in tensors))

    _visit_layers(model, input_size, batch, visit)
    return traffic


def layer_gemms(model: nn.Module, input_size: Sequence[int], batch: int = 1) -> dict[str, tuple[int, int, int]]:
    """The matrix product (M, K, N) each ungrouped Conv2d and each Linear amounts to, by module name.

    A conv lowered to one GEMM (im2col) multiplies a (batch x output pixels, in channels x
    kernel area) matrix by a (in channels x kernel area, out channels) one, so M x K x N is its
    MACs; for a 1x1 conv it is the layer itself in channels-last layout. Grouped and depthwise
    convs are left out: they are not one GEMM, and they are bound by memory traffic.
    """
    gemms: dict[str, tuple[int, int, int]] = {}

    def visit(name: str, module: nn.Module, x: torch.Tensor, output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d) and module.groups == 1:
            kh, kw = module.kernel_size
            gemms[name] = (output[0, 0].numel() * batch, module.in_channels * kh * kw, module.out_channels)
        elif isinstance(module, nn.Linear):
            gemms[name] = (output[..., 0].numel() * batch, module.in_features, module.out_features)

    _visit_layers(model, input_size, 1, visit)
    return gemms


def count_macs(model: nn.Module, input_size: Sequence[int]) -> int:
    """Total Conv2d + Linear MACs for one image of ``input_size`` (C, H, W)."""
    return sum(layer_macs(model, input_size).values())


def timed(fn: Callable[[], object], repeats: int, warmup: int = 2) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out
