"""Parameter and multiply-accumulate counts in the papers' convention.

MACs count Conv2d and Linear layers only (no bias, norm, activation or pooling), for one image.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["count_macs", "count_params", "layer_macs", "module_macs", "timed"]


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
def layer_macs(model: nn.Module, input_size: Sequence[int]) -> dict[str, int]:
    """MACs of every Conv2d and Linear for one image of ``input_size`` (C, H, W), by module name."""
    macs: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            macs[name] = macs.get(name, 0) + module_macs(module, output)
        return fn

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            hooks.append(module.register_forward_hook(hook(name)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return macs


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
