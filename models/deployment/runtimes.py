"""The runtimes a model is deployed to, one class each, and the one place that knows them.

Each ``Runtime`` writes its file from an eval-mode model (``write``, in fp32 and, where it has a
quantizer, in int8 from calibration batches), loads the file back into the runtime itself and
runs it (``load``), and reads back what the file says about its input (``read_metadata``).
``dszoo.deployment.export`` checks what ``load`` computes; the benchmark times it.

- ``torchscript`` and ``pt2``: PyTorch itself (``.pt2`` int8: the PT2E graph of
  ``quantize.int8_graph``).
- ``onnx``: ONNX Runtime's CPU provider; int8 by ONNX Runtime's own static quantization
  (``quantize_static``, QDQ, per-channel weights), which its graph optimizer turns into
  QLinearConv / QGemm kernels.
- ``pte``: ExecuTorch with the XNNPACK delegate; int8 by the PT2E flow with ExecuTorch's
  ``XNNPACKQuantizer`` (symmetric per-channel weights), which XNNPACK runs in int8.
- ``openvino``: an OpenVINO IR (``.xml`` and its ``.bin`` beside it) run by OpenVINO's CPU plugin
  at fp32 precision; int8 by NNCF's post-training quantization.

Each int8 file is judged by the layers its runtime really computes in int8 (``Written.float_layers``
lists those it computes in floating point); ops a runtime leaves outside its fast path are named in
``Written.notes``.
"""
from __future__ import annotations

import abc
import errno
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
from torch import nn

from ..files import write_through_memory
from ..quiet import libraries_quiet

__all__ = ["EDGE_RUNTIMES", "ExportError", "RUNTIMES", "Runtime", "Written", "runtime_for_path"]

Run = Callable[[torch.Tensor], torch.Tensor]

METADATA_NAME = "dszoo.json"
"""What every exported file carries beside the network, under this name: a TorchScript or
``.pt2`` extra file, ONNX metadata, OpenVINO runtime info."""

PTE_METADATA_METHOD = "dszoo_metadata"
"""The constant method of a ``.pte`` program that holds its metadata."""


class ExportError(RuntimeError):
    """An export that could not be written or did not reproduce eager outputs."""


@dataclass
class Written:
    """What writing a file found: the conv/linear layers its runtime computes in floating point
    (for an int8 file: those left out of int8), the number of such layers in all, and notes (ops
    outside a delegate)."""

    float_layers: list[str] = field(default_factory=list)
    layers: int = 0
    notes: list[str] = field(default_factory=list)


def exported_with_dynamic_batch(model: nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` whose first dimension, the batch, stays dynamic (1 to 1024)."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model, (example,), dynamic_shapes=({0: batch},))


def _graph_float_layers(graph: torch.fx.Graph) -> tuple[list[str], int]:
    """The conv/linear nodes of a graph whose weights do not come from a dequantize op, and how
    many conv/linear nodes it has."""
    layers = [n for n in graph.nodes if n.op == "call_function" and getattr(n.target, "__name__", "").split(".")[0]
              in ("conv2d", "conv1d", "linear", "convolution")]
    floating = [n.name for n in layers if not (isinstance(n.args[1], torch.fx.Node)
                                               and "dequantize" in str(n.args[1].target))]
    return floating, len(layers)


class Runtime(abc.ABC):
    """One runtime: its ``--format`` name, file suffixes, pip extra, and how to write, load and
    run its files. ``paths`` are the file and its ``companions`` (an OpenVINO ``.bin``)."""

    format: str = ""
    runtime: str = ""
    suffixes: tuple[str, ...] = ()
    extra: Optional[str] = None
    precisions: tuple[str, ...] = ("fp32",)
    modules: tuple[str, ...] = ()
    """What must import for this runtime to write and run files (a missing one names ``extra``)."""

    def companions(self, path: Path) -> tuple[Path, ...]:
        """Files written beside ``path`` with it."""
        return ()

    def missing(self) -> Optional[str]:
        """Why this runtime cannot run here (its package absent, with the pip line), or None."""
        for module in self.modules:
            try:
                with libraries_quiet(native=True):  # importing is not the moment for their notices
                    __import__(module)
            except ImportError:
                return f"{self.runtime} ({module}), not installed here: pip install 'dszoo[{self.extra}]'"
        return None

    def require(self) -> None:
        problem = self.missing()
        if problem is not None:
            raise ExportError(f"--format {self.format} needs {problem}")

    @abc.abstractmethod
    def write(self, model: nn.Module, example: torch.Tensor, paths: Sequence[str], metadata: str,
              calibration: Optional[list[torch.Tensor]] = None) -> Written:
        """Write ``model`` (traced at ``example``'s shape, batch dynamic) to ``paths`` carrying
        ``metadata``; int8 from ``calibration`` batches where given. What the runtime computes
        in floating point is in the returned ``Written``."""

    @abc.abstractmethod
    def load(self, paths: Sequence[str], threads: Optional[int] = None) -> Run:
        """The written file loaded into the runtime, as a function of an input batch; ``threads``
        sets its thread count (for the PyTorch runtimes, torch's process-wide count)."""

    @abc.abstractmethod
    def read_metadata(self, path: str) -> dict[str, Any]:
        """The metadata the file carries (``{}`` for a file written without it)."""


class TorchScript(Runtime):
    format, runtime, suffixes = "torchscript", "PyTorch (TorchScript)", (".pt", ".pth", ".ts")

    def write(self, model, example, paths, metadata, calibration=None) -> Written:
        scripted = torch.jit.script(model)
        write_through_memory(paths[0], lambda fh: torch.jit.save(scripted, fh, _extra_files={METADATA_NAME: metadata}))
        return Written()

    def load(self, paths, threads=None) -> Run:
        loaded = torch.jit.load(paths[0], map_location="cpu")
        return lambda x: loaded(x)

    def read_metadata(self, path):
        extra = {METADATA_NAME: ""}
        torch.jit.load(path, map_location="cpu", _extra_files=extra)
        return json.loads(extra[METADATA_NAME] or "{}")


class PT2(Runtime):
    """``torch.export``'s ``.pt2``; int8: the PT2E graph of ``quantize.int8_graph`` (load it with
    ``torch.export.load`` after ``import torchao.quantization.pt2e``, which registers its ops)."""

    format, runtime, suffixes, precisions = "pt2", "PyTorch (torch.export)", (".pt2",), ("fp32", "int8")

    def write(self, model, example, paths, metadata, calibration=None) -> Written:
        if calibration is not None:
            from .quantize import int8_graph

            model = int8_graph(model, calibration)
        program = exported_with_dynamic_batch(model, example)
        # through a file object (a temporary name does not end in .pt2), in memory (see write_through_memory)
        write_through_memory(paths[0], lambda fh: torch.export.save(program, fh, extra_files={METADATA_NAME: metadata}))
        return Written(*_graph_float_layers(program.graph))

    def load(self, paths, threads=None) -> Run:
        if threads is not None:
            torch.set_num_threads(threads)
        with open(paths[0], "rb") as fh:
            loaded = torch.export.load(fh).module()
        return lambda x: loaded(x)

    def read_metadata(self, path):
        extra = {METADATA_NAME: ""}
        with open(path, "rb") as fh:
            torch.export.load(fh, extra_files=extra)
        return json.loads(extra[METADATA_NAME] or "{}")


class OnnxRuntime(Runtime):
    format, runtime, suffixes, extra = "onnx", "ONNX Runtime", (".onnx",), "onnx"
    precisions, modules = ("fp32", "int8"), ("onnx", "onnxscript", "onnxruntime")

    def write(self, model, example, paths, metadata, calibration=None) -> Written:
        import onnx

        path = paths[0]
        with tempfile.TemporaryDirectory() as folder:
            fp32 = path if calibration is None else str(Path(folder) / "fp32.onnx")
            torch.onnx.export(model, (example,), fp32, input_names=["input"], output_names=["output"],
                              dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1024)}}, dynamo=True,
                              verbose=False, external_data=False)  # one file: models here are far below 2 GB
            if calibration is not None:
                _onnxruntime_int8(fp32, path, calibration, folder)
        proto = onnx.load(path)
        onnx.helper.set_model_props(proto, {METADATA_NAME: metadata})
        onnx.save(proto, path)
        return self._float_layers(path)

    @staticmethod
    def _float_layers(path: str) -> Written:
        """The conv/linear nodes ONNX Runtime's optimized graph of the file computes in floating
        point (its int8 kernels are QLinearConv, QGemm, QLinearMatMul, MatMulInteger)."""
        import onnx
        import onnxruntime as ort

        with tempfile.TemporaryDirectory() as folder:
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(folder) / "optimized.onnx")
            options.log_severity_level = 3  # its note that an optimized file fits this CPU alone
            ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
            nodes = onnx.load(options.optimized_model_filepath).graph.node
        floating = ("Conv", "FusedConv", "Gemm", "MatMul", "FusedMatMul", "NchwcConv")
        integer = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger")
        return Written([n.name for n in nodes if n.op_type in floating],
                       sum(n.op_type in floating + integer for n in nodes))

    def load(self, paths, threads=None) -> Run:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        # its threads sleep between calls rather than spin, which would take the cores from
        # whatever runs next (measured: PyTorch eager 20x slower beside a spinning session)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(paths[0], options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"input": x.numpy()})[0])

    def read_metadata(self, path):
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        return json.loads(props.get(METADATA_NAME, "{}"))


def _onnxruntime_int8(fp32: str, out: str, calibration: list[torch.Tensor], folder: str) -> None:
    """ONNX Runtime's static quantization of the fp32 file ``fp32`` into ``out``: QDQ nodes around
    per-channel int8 weights and uint8 activations, calibrated on ``calibration`` (min-max)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter([{"input": x.numpy()} for x in calibration])

        def get_next(self) -> Optional[dict]:
            return next(self.left, None)

    prepared = str(Path(folder) / "prepared.onnx")
    quant_pre_process(fp32, prepared, skip_symbolic_shape=True)
    quantize_static(prepared, out, Batches(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


class ExecuTorch(Runtime):
    """ExecuTorch with the XNNPACK delegate; the metadata is the program's constant method
    ``dszoo_metadata`` (its UTF-8 bytes as a uint8 tensor)."""

    format, runtime, suffixes, extra = "pte", "ExecuTorch", (".pte",), "executorch"
    precisions, modules = ("fp32", "int8"), ("executorch.exir", "executorch.runtime")

    @libraries_quiet(native=True)
    def write(self, model, example, paths, metadata, calibration=None) -> Written:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        if calibration is not None:
            model = _xnnpack_int8(model, calibration)
        program = exported_with_dynamic_batch(model, example)
        floating, layers = _graph_float_layers(program.graph)
        about = torch.frombuffer(bytearray(metadata.encode()), dtype=torch.uint8)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()],
                                              constant_methods={PTE_METADATA_METHOD: about})
        outside = _outside_the_delegate(lowered.exported_program().graph)
        with open(paths[0], "wb") as fh:
            fh.write(lowered.to_executorch().buffer)
        notes = [f"ExecuTorch runs {len(outside)} op(s) outside XNNPACK, in its portable fp32 kernels: "
                 f"{', '.join(outside[:4])}{', ...' if len(outside) > 4 else ''}"] if outside else []
        return Written(floating, layers, notes)

    @libraries_quiet(native=True)
    def load(self, paths, threads=None) -> Run:
        from executorch.runtime import Runtime as ExecuTorchRuntime

        program = ExecuTorchRuntime.get().load_program(paths[0])
        method = program.load_method("forward")
        # XNNPACK's lowering plans memory for batches up to a bound of its own (15 examples here,
        # whatever torch.export's bound), so larger batches run in slices of that many
        most = program.metadata("forward").input_tensor_meta(0).sizes()[0]
        _executorch_threadpool_started()
        return lambda x: torch.cat([method.execute([part.contiguous()])[0] for part in x.split(most)])

    @libraries_quiet(native=True)
    def read_metadata(self, path):
        from executorch.runtime import Runtime as ExecuTorchRuntime

        program = ExecuTorchRuntime.get().load_program(path)
        if PTE_METADATA_METHOD not in program.method_names:
            return {}
        about = program.load_method(PTE_METADATA_METHOD).execute([])[0]
        return json.loads(bytes(about.tolist()).decode())


def _executorch_threadpool_started() -> None:
    """Start ExecuTorch's thread pool now (a process-wide one): it probes the CPU as it starts,
    logging from C++, which the caller's ``libraries_quiet(native=True)`` holds back; started
    lazily, by the first run large enough to use it, it would log in the middle of a command."""
    from executorch.extension.pybindings import portable_lib

    portable_lib._threadpool_get_thread_count()


_LAYOUT_OPS = ("sym_size", "getitem", "view_copy", "_to_dim_order_copy", "unsqueeze_copy", "squeeze_copy",
               "expand_copy", "alias_copy", "clone")
"""Ops that move or reshape data rather than compute on it."""


def _outside_the_delegate(graph: torch.fx.Graph) -> list[str]:
    """The computing ops of a lowered ExecuTorch graph that no delegate took, each with the module
    it came from."""
    found = []
    for node in graph.nodes:
        if node.op != "call_function" or "executorch_call_delegate" in str(node.target):
            continue
        parts = str(getattr(node.target, "__name__", node.target)).split(".")  # e.g. aten.mean.dim
        if len(parts) < 3 or parts[1] in _LAYOUT_OPS:  # not an operator (a Python int of a size), or layout
            continue
        name = parts[1]
        stack = node.meta.get("nn_module_stack") or {}
        where = next(reversed(stack.values()))[0] if stack else ""
        found.append(f"{name}" + (f" ({where})" if where else ""))
    return found


def _xnnpack_int8(model: nn.Module, calibration: list[torch.Tensor]) -> torch.fx.GraphModule:
    """``model`` quantized by the PT2E flow with ExecuTorch's ``XNNPACKQuantizer`` (symmetric
    per-channel int8 weights, int8 activations), calibrated on ``calibration``."""
    import copy

    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    from .quantize import _converted, _pt2e, export_for_quantization

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = _pt2e().prepare(export_for_quantization(copy.deepcopy(model).eval(), calibration[0]), quantizer)
    for x in calibration:
        prepared(x)
    return _converted(prepared)


class OpenVINO(Runtime):
    """OpenVINO IR: ``NAME.xml`` (the graph, with the metadata as runtime info) and ``NAME.bin``
    (the weights, kept in fp32) beside it, run by the CPU plugin at fp32 inference precision (its
    default on CPUs with bf16 support would be bf16)."""

    format, runtime, suffixes, extra = "openvino", "OpenVINO", (".xml",), "openvino"
    precisions, modules = ("fp32", "int8"), ("openvino", "nncf")

    def companions(self, path: Path) -> tuple[Path, ...]:
        return (path.with_suffix(".bin"),)

    @libraries_quiet()
    def write(self, model, example, paths, metadata, calibration=None) -> Written:
        import openvino as ov

        converted = ov.convert_model(model, example_input=example)
        converted.reshape([-1, *example.shape[1:]])
        if calibration is not None:
            import nncf

            converted = nncf.quantize(converted, nncf.Dataset([x.numpy() for x in calibration]),
                                      subset_size=len(calibration))  # its items are our batches
        converted.set_rt_info(metadata, [METADATA_NAME])
        with tempfile.TemporaryDirectory(dir=Path(paths[0]).parent) as folder:
            try:
                ov.save_model(converted, str(Path(folder) / "model.xml"), compress_to_fp16=False)
            except RuntimeError as exc:  # its C++ writer says only "iostream error" when the disk is full
                raise OSError(errno.EIO, f"OpenVINO could not write it ({' '.join(str(exc).split())[:120]}); is the "
                                         "disk full?") from None  # atomic_path names the file it was for
            os.replace(Path(folder) / "model.xml", paths[0])
            os.replace(Path(folder) / "model.bin", paths[1])
        compiled = self._compiled(paths)
        kinds = ("Convolution", "GroupConvolution", "FullyConnected", "MatMul")
        layers = [op.get_rt_info() for op in compiled.get_runtime_model().get_ordered_ops()]
        layers = [info for info in layers if info["layerType"].astype(str) in kinds]
        floating = [_openvino_layer_name(info["originalLayersNames"].astype(str)) for info in layers
                    if info["runtimePrecision"].astype(str) not in ("u8", "i8")]
        return Written(floating, len(layers))

    @staticmethod
    @libraries_quiet()
    def _compiled(paths: Sequence[str], threads: Optional[int] = None) -> Any:
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = str(threads)
        return core.compile_model(core.read_model(paths[0], paths[1]), "CPU", config)

    def load(self, paths, threads=None) -> Run:
        compiled = self._compiled(paths, threads)
        return lambda x: torch.from_numpy(compiled(x.numpy())[0].copy())

    def read_metadata(self, path):
        import openvino as ov

        model = ov.Core().read_model(path)
        if not model.has_rt_info([METADATA_NAME]):
            return {}
        return json.loads(model.get_rt_info([METADATA_NAME]).astype(str))


def _openvino_layer_name(original: str) -> str:
    """``stages.7.0.attn (scaled_dot_product_attention)`` from OpenVINO's
    ``__module.stages.7.0.attn/aten::scaled_dot_product_attention/ScaledDotProductAttention``."""
    parts = original.split(",")[0].removeprefix("__module.").split("/")
    return f"{parts[0]} ({parts[1].split('::')[-1]})" if len(parts) > 1 else parts[0]


RUNTIMES: dict[str, Runtime] = {r.format: r for r in (TorchScript(), OnnxRuntime(), PT2(), ExecuTorch(), OpenVINO())}
"""Every runtime, by its ``--format`` name."""

EDGE_RUNTIMES = ("onnx", "pte", "openvino")
"""The runtimes beside PyTorch's own: where ``dszoo-spot --runtime`` and ``dszoo-benchmark
--runtimes`` run a network."""


def runtime_for_path(path: os.PathLike | str) -> Runtime:
    """The runtime whose files end like ``path``."""
    for runtime in RUNTIMES.values():
        if str(path).endswith(runtime.suffixes):
            return runtime
    allowed = ", ".join(s for r in RUNTIMES.values() for s in r.suffixes)
    raise ValueError(f"{path}: not an exported model file (allowed endings: {allowed})")
