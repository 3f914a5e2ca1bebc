"""Export to TorchScript, ONNX or torch.export (``.pt2``), each verified after writing.

Every file is loaded back and compared with eager on a fresh random batch of another batch
size (the batch dimension is dynamic in every format), so a broken export never passes silently.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Callable, Union

import torch
from torch import nn

from .atomic import atomic_path
from .inference import fold_batchnorm

__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "ExportError", "export_model"]

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


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, out: PathLike, input_size: tuple[int, ...], atol: float = 1e-4,
                 fold_bn: bool = True) -> float:
    """Write ``model`` (eval mode) as ``fmt`` to ``out``, reload it and return the max abs
    difference against the original eager model on a fresh batch; raise ``ExportError`` above
    ``atol``. With ``fold_bn`` the exported graph has every BatchNorm folded into its conv
    (``optimize_for_inference``'s first step). The file appears at ``out`` only once verified.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    model = model.eval()
    exported = fold_batchnorm(copy.deepcopy(model)) if fold_bn else model
    with atomic_path(out) as tmp:
        run = EXPORT_FORMATS[fmt](exported, torch.randn(2, *input_size), tmp)
        fresh = torch.randn(3, *input_size)
        diff = (run(fresh) - model(fresh)).abs().max().item()
        if not diff <= atol:
            raise ExportError(f"{fmt} export differs from eager by {diff:.3g} (allowed {atol:g})")
    return diff
