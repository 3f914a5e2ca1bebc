"""Export to TorchScript, ONNX, torch.export (``.pt2``) or ExecuTorch (``.pte``, the XNNPACK
delegate), each verified after writing in its own runtime.

Every file is loaded back and compared with eager on a fresh random batch of another batch
size (the batch dimension is dynamic in every format), by relative difference, so a broken
export never passes silently; a freshly built model is also checked through a copy with
randomised BatchNorm statistics (``ExportCheck``). Every file carries what its input must be
(``export_metadata``: image size, resize and normalisation, or the MFCC front end) and its class
names; ``read_export_metadata`` reads them back.

int8 (``precision="int8"`` with calibration batches) writes the PyTorch int8 model of
``dszoo.deployment.quantize.int8_graph``: as ONNX with QuantizeLinear/DequantizeLinear pairs
(QDQ, run by onnxruntime's int8 kernels) or as ``.pt2`` (load it with ``torch.export.load``
after ``import torchao.quantization.pt2e``, which registers the quantize ops), verified against
that PyTorch int8 model on fresh inputs.
"""
from __future__ import annotations

import copy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from ..files import atomic_path
from ..preprocessing import input_spec
from .optimize import PRECISIONS, fold_batchnorm, relative_difference

__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "EXPORT_PRECISIONS", "ExportCheck", "ExportError", "INT8_EXPORT_TOLERANCE",
           "METADATA_NAME", "export_metadata", "export_model", "has_initial_batchnorm_statistics",
           "randomise_batchnorm_statistics", "read_export_metadata"]

PathLike = Union[str, Path]


class ExportError(RuntimeError):
    """An export that could not be written or did not reproduce eager outputs."""


METADATA_NAME = "dszoo.json"
"""What every exported file carries beside the network (``export_metadata``, read back by
``read_export_metadata``): a TorchScript or ``.pt2`` extra file of this name, ONNX metadata under
this key."""


def export_metadata(model: nn.Module, input_size: tuple[int, ...], precision: str) -> str:
    """JSON naming the network, its input (``dszoo.preprocessing.input_spec``: how raw images or
    audio become it), its class names where the model knows them, and the precision."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    about = {"model": cfg.get("architecture"), "input": input_spec({**cfg, "input_size": tuple(input_size)}),
             "class_names": cfg.get("class_names"), "precision": precision}
    return json.dumps(about, allow_nan=False)


def read_export_metadata(path: PathLike) -> dict[str, Any]:
    """The ``export_metadata`` an exported file carries (``{}`` for a file written without it)."""
    path = str(path)
    if path.endswith(".onnx"):
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props.get(METADATA_NAME, "{}"))
    if path.endswith(".pte"):
        from executorch.runtime import Runtime

        program = Runtime.get().load_program(path)
        if PTE_METADATA_METHOD not in program.method_names:
            return {}
        about = program.load_method(PTE_METADATA_METHOD).execute([])[0]
        return json.loads(bytes(about.tolist()).decode())
    extra = {METADATA_NAME: ""}
    if path.endswith(".pt2"):
        with open(path, "rb") as fh:
            torch.export.load(fh, extra_files=extra)
    else:
        torch.jit.load(path, map_location="cpu", _extra_files=extra)
    return json.loads(extra[METADATA_NAME] or "{}")


PTE_METADATA_METHOD = "dszoo_metadata"
"""The constant method of a ``.pte`` program that holds its ``export_metadata``."""


def _exported_with_dynamic_batch(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` whose first dimension, the batch, stays dynamic (1 to 1024)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _torchscript(model: nn.Module, example: torch.Tensor, path: str, metadata: str) -> Callable[[torch.Tensor], torch.Tensor]:
    torch.jit.save(torch.jit.script(model), path, _extra_files={METADATA_NAME: metadata})
    loaded = torch.jit.load(path, map_location="cpu")
    return lambda x: loaded(x)


def _pt2(model: nn.Module, example: torch.Tensor, path: str, metadata: str) -> Callable[[torch.Tensor], torch.Tensor]:
    program = _exported_with_dynamic_batch(model, example)
    with open(path, "wb") as fh:  # through a file object: the temporary name does not end in .pt2
        torch.export.save(program, fh, extra_files={METADATA_NAME: metadata})
    with open(path, "rb") as fh:
        loaded = torch.export.load(fh).module()
    return lambda x: loaded(x)


def _onnx(model: nn.Module, example: torch.Tensor, path: str, metadata: str) -> Callable[[torch.Tensor], torch.Tensor]:
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
    import onnx

    proto = onnx.load(path)
    onnx.helper.set_model_props(proto, {METADATA_NAME: metadata})
    onnx.save(proto, path)
    options = ort.SessionOptions()
    if _is_qdq(path):
        # An int8 file is checked as its QuantizeLinear/DequantizeLinear nodes define it, op by op.
        # onnxruntime's fused int8 kernels compute u8 x s8 products that can saturate on CPUs without
        # VNNI (its quantization guide says so): deployment figures for them are in docs/performance.md.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])


def _pte(model: nn.Module, example: torch.Tensor, path: str, metadata: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """ExecuTorch: ``torch.export`` (dynamic batch), lowered to the XNNPACK delegate, written as a
    ``.pte`` program and run back in ExecuTorch's own runtime. The metadata is the program's
    constant method ``dszoo_metadata`` (its UTF-8 bytes as a uint8 tensor)."""
    try:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower
        from executorch.runtime import Runtime
    except ImportError:
        raise ExportError("ExecuTorch export needs the executorch extra: pip install 'dszoo[executorch]'") from None
    program = _exported_with_dynamic_batch(model, example)
    about = torch.frombuffer(bytearray(metadata.encode()), dtype=torch.uint8)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                          constant_methods={PTE_METADATA_METHOD: about})
    with open(path, "wb") as fh:
        fh.write(lowered.to_executorch().buffer)
    method = Runtime.get().load_program(path).load_method("forward")
    return lambda x: method.execute([x.contiguous()])[0]


def _is_qdq(path: str) -> bool:
    """Whether an ONNX file holds quantized (QuantizeLinear) nodes."""
    import onnx

    return any(n.op_type == "QuantizeLinear" for n in onnx.load(path).graph.node)


EXPORT_FORMATS: dict[str, Callable[[nn.Module, torch.Tensor, str, str], Callable[[torch.Tensor], torch.Tensor]]] = {
    "torchscript": _torchscript,
    "onnx": _onnx,
    "pt2": _pt2,
    "pte": _pte,
}


EXPORT_SUFFIXES: dict[str, tuple[str, ...]] = {
    "torchscript": (".pt", ".pth", ".ts"),
    "onnx": (".onnx",),
    "pt2": (".pt2",),
    "pte": (".pte",),
}
"""File name endings each format's file may have (``scripts/export.py`` checks ``--out``)."""

def _onnx_float_layers(path: str) -> list[str]:
    """The Conv/Gemm/MatMul nodes of an ONNX file whose weights are not int8 behind a DequantizeLinear."""
    import onnx

    graph = onnx.load(path).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in int8}
    return [n.name for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] not in dequantized]


def _pt2_float_layers(path: str) -> list[str]:
    """The conv/linear nodes of a ``.pt2`` file whose weights do not come from a dequantize op."""
    with open(path, "rb") as fh:
        graph = torch.export.load(fh).graph
    layers = [n for n in graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "").split(".")[0]
              in ("conv2d", "conv1d", "linear", "convolution")]
    return [n.name for n in layers if not (isinstance(n.args[1], torch.fx.Node)
                                           and "dequantize" in str(n.args[1].target))]


INT8_LAYER_CHECKS: dict[str, Callable[[str], list[str]]] = {"onnx": _onnx_float_layers, "pt2": _pt2_float_layers}
"""For each int8 format: the layers of a written file that still compute with floating-point weights."""

EXPORT_PRECISIONS: dict[str, tuple[str, ...]] = {"fp32": tuple(EXPORT_FORMATS), "int8": ("onnx", "pt2")}
"""The formats each precision exports to (TorchScript cannot hold the quantize/dequantize ops)."""

INT8_EXPORT_TOLERANCE = 2e-2
"""Allowed relative difference between an int8 file and the PyTorch int8 model. Both quantize
the same activations with the same scales, but where they sum in another order an activation can
round to the neighbouring int8 step, and the step travels on through the layers (up to 5e-3 of
the output's range measured for the registry's models on random inputs); a wrong scale or zero
point moves it by its own size. That the file is int8 at all is checked apart (an fp32 file
agrees with the int8 model to about 1e-2):
every conv and linear layer in it must take int8 weights (``INT8_LAYER_CHECKS``)."""


@dataclass(frozen=True)
class ExportCheck:
    """How an export was verified: max |file - model| / max |model| on a fresh batch of another
    size, for the model itself and, where its BatchNorm statistics are still at their initial
    values (BatchNorm then computes the identity, so an export that mishandles it would pass),
    for a copy of it with randomised statistics exported the same way."""

    relative_difference: float
    randomised_relative_difference: Optional[float] = None
    reference: str = "the model"

    def __str__(self) -> str:
        text = f"max relative difference vs {self.reference} on a fresh batch {self.relative_difference:.2e}"
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


def _written_and_checked(model: nn.Module, fmt: str, path: str, input_size: tuple[int, ...], fold_bn: bool,
                         calibration: Optional[list[torch.Tensor]], metadata: str = "{}") -> float:
    """Write ``model`` as ``fmt`` to ``path``, load it back and return its relative difference
    from the eager model on a fresh batch of 3 (the export was traced at a batch of 2). With
    ``calibration`` the file holds, and is compared with, the model's PyTorch int8 graph."""
    if calibration is not None:
        from .quantize import int8_graph

        exported = reference = int8_graph(model, calibration)
    else:
        reference = model
        exported = fold_batchnorm(copy.deepcopy(model)) if fold_bn else model
    run = EXPORT_FORMATS[fmt](exported, torch.randn(2, *input_size), path, metadata)
    if calibration is not None:
        float_layers = INT8_LAYER_CHECKS[fmt](path)
        if float_layers:
            raise ExportError(f"the int8 {fmt} file keeps {len(float_layers)} layers with floating-point weights "
                              f"({', '.join(float_layers[:3])}{', ...' if len(float_layers) > 3 else ''})")
    fresh = torch.randn(3, *input_size)
    return relative_difference(run(fresh), reference(fresh))


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, out: PathLike, input_size: tuple[int, ...], rtol: Optional[float] = None,
                 fold_bn: bool = True, *, precision: str = "fp32", calibration: Any = None,
                 overwrite: bool = True) -> ExportCheck:
    """Write ``model`` (eval mode) as ``fmt`` to ``out`` and verify it (``ExportCheck``); raise
    ``ExportError`` where a relative difference is above ``rtol`` (default 1e-4 for fp32,
    ``INT8_EXPORT_TOLERANCE`` for int8). With ``fold_bn`` the exported graph has every BatchNorm
    folded into its conv (``optimize_for_inference``'s first step; int8 always folds).
    ``precision="int8"`` needs ``calibration``: input batches, or ``(input, target)`` pairs, of
    at least two examples each (the file keeps a dynamic batch dimension).
    The file appears at ``out`` only once verified; with ``overwrite=False`` only if nothing
    appeared there meanwhile (else ``FileExistsError``, and nothing is replaced).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision {precision!r} cannot be exported; allowed: {', '.join(EXPORT_PRECISIONS)} "
                         f"({', '.join(p for p in PRECISIONS if p not in EXPORT_PRECISIONS)} runs through "
                         "optimize_for_inference)")
    if fmt not in EXPORT_PRECISIONS[precision]:
        raise ValueError(f"{precision} exports as {' or '.join(EXPORT_PRECISIONS[precision])}, not {fmt}")
    model = model.eval()
    batches = None
    if precision == "int8":
        from .quantize import CalibrationError, calibration_batches

        batches = calibration_batches(calibration, model)
        if len(batches[0]) < 2:
            raise CalibrationError("an int8 export calibrates on batches of at least 2 examples (the file keeps a "
                                   f"dynamic batch dimension); the first batch has {len(batches[0])}")
    tolerance = rtol if rtol is not None else (INT8_EXPORT_TOLERANCE if batches else 1e-4)
    reference = "the PyTorch int8 model" if batches else "the model"
    randomised = None
    with atomic_path(out, replace=overwrite) as tmp:
        metadata = export_metadata(model, input_size, precision)
        check = ExportCheck(_written_and_checked(model, fmt, tmp, input_size, fold_bn, batches, metadata),
                            reference=reference)
        if has_initial_batchnorm_statistics(model):
            probe = randomise_batchnorm_statistics(copy.deepcopy(model))
            with tempfile.TemporaryDirectory() as folder:
                randomised = _written_and_checked(probe, fmt, str(Path(folder) / Path(tmp).name), input_size, fold_bn,
                                                  batches)
            check = ExportCheck(check.relative_difference, randomised, reference)
        worst = max(check.relative_difference, randomised or 0.0)
        if not worst <= tolerance:
            raise ExportError(f"{precision} {fmt} export differs from {reference}: {check} (allowed {tolerance:g})")
    return check
