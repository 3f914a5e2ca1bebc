"""Export to TorchScript, ONNX or torch.export (``.pt2``), each verified after writing.

Every file is loaded back and compared with eager on a fresh random batch of another batch
size (the batch dimension is dynamic in every format), by relative difference, so a broken
export never passes silently; a freshly built model is also checked through a copy with
randomised BatchNorm statistics (``ExportCheck``).
"""
from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from ..files import atomic_path
from .optimize import fold_batchnorm, relative_difference

__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "ExportCheck", "ExportError", "export_model",
           "has_initial_batchnorm_statistics", "randomise_batchnorm_statistics"]

PathLike = Union[str, Path]


class ExportError(RuntimeError):
    """An export that could not be written or did not reproduce eager outputs."""


def _torchscript(model: nn.Module, example: torch.Tensor, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    torch.jit.save(torch.jit.script(model), path)
    loaded = torch.jit.load(path, map_location="cpu")
    return lambda x: loaded(x)


def _pt2(model: nn.Module, example: torch.Tensor, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    return lambda x: loaded(x)


def _onnx(model: nn.Module, example: torch.Tensor, path: str) -> Callable[[torch.Tensor], torch.Tensor]:
    try:
        import onnxruntime as ort
    except ImportError:
        raise ExportError("ONNX export is verified with onnxruntime: pip install 'dszoo[onnx]'") from None
    try:
        torch.onnx.export(
            model, (example,), path, input_names=["input"], output_names=["output"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, dynamo=True, verbose=False,
            external_data=False,  # one self-contained file (models here are far below 2 GB)
        )
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the onnx extras: pip install 'dszoo[onnx]' ({exc})") from None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


EXPORT_FORMATS: dict[str, Callable[[nn.Module, torch.Tensor, str], Callable[[torch.Tensor], torch.Tensor]]] = {
    "torchscript": _torchscript,
    "onnx": _onnx,
    "pt2": _pt2,
}


EXPORT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "torchscript": (".pt", ".pth", ".ts"),
    "onnx": (".onnx",),
    "pt2": (".pt2",),
}
"""File name endings each format's file may have (``scripts/export.py`` checks ``--out``)."""


@dataclass(frozen=True)
class ExportCheck:
    """How an export was verified: max |file - model| / max |model| on a fresh batch of another
    size, for the model itself and, where its BatchNorm statistics are still at their initial
    values (BatchNorm then computes the identity, so an export that mishandles it would pass),
    for a copy of it with randomised statistics exported the same way."""

    relative_difference: float
    randomised_relative_difference: Optional[float] = None

    def __str__(self) -> str:
        text = f"max relative difference vs the model on a fresh batch {self.relative_difference:.2e}"
        if self.randomised_relative_difference is not None:
            text += (f"; {self.randomised_relative_difference:.2e} on a copy with randomised BatchNorm statistics "
                     "(the model's own are at their initial values)")
        return text


def has_initial_batchnorm_statistics(model: nn.Module) -> bool:
    """Whether the model has BatchNorm layers and all of them still hold their initial running
    statistics (mean 0, variance 1): a freshly built model, whose BatchNorm is the identity."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    return bool(norms) and all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in norms)


@torch.no_grad()
def randomise_batchnorm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine weights and running statistics, in place, from a
    generator seeded with ``seed``; returns the model in eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.affine:
                m.weight.copy_(1.0 + 0.2 * torch.randn(n, generator=gen))
                m.bias.copy_(0.2 * torch.randn(n, generator=gen))
            if m.track_running_stats:
                m.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
    return model.eval()


def _written_and_checked(model: nn.Module, fmt: str, path: str, input_size: tuple[int, ...], fold_bn: bool) -> float:
    """Write ``model`` as ``fmt`` to ``path``, load it back and return its relative difference
    from the eager model on a fresh batch of 3 (the export was traced at a batch of 2)."""
    exported = fold_batchnorm(copy.deepcopy(model)) if fold_bn else model
    run = EXPORT_FORMATS[fmt](exported, torch.randn(2, *input_size), path)
    fresh = torch.randn(3, *input_size)
    return relative_difference(run(fresh), model(fresh))


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, out: PathLike, input_size: tuple[int, ...], rtol: float = 1e-4,
                 fold_bn: bool = True) -> ExportCheck:
    """Write ``model`` (eval mode) as ``fmt`` to ``out`` and verify it (``ExportCheck``); raise
    ``ExportError`` where a relative difference is above ``rtol``. With ``fold_bn`` the exported
    graph has every BatchNorm folded into its conv (``optimize_for_inference``'s first step).
    The file appears at ``out`` only once verified.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    model = model.eval()
    randomised = None
    with atomic_path(out) as tmp:
        check = ExportCheck(_written_and_checked(model, fmt, tmp, input_size, fold_bn))
        if has_initial_batchnorm_statistics(model):
            probe = randomise_batchnorm_statistics(copy.deepcopy(model))
            with tempfile.TemporaryDirectory() as folder:
                randomised = _written_and_checked(probe, fmt, str(Path(folder) / Path(tmp).name), input_size, fold_bn)
            check = ExportCheck(check.relative_difference, randomised)
        worst = max(check.relative_difference, randomised or 0.0)
        if not worst <= rtol:
            raise ExportError(f"{fmt} export differs from the model: {check} (allowed {rtol:g})")
    return check
