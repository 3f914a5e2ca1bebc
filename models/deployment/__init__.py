"""Deployment: compiling a model for inference (``optimize``), in int8 or bf16 (``quantize``), and
exporting it to the runtimes of ``runtimes`` (TorchScript, ``.pt2``, ONNX Runtime, ExecuTorch,
OpenVINO) with ``export``, each file checked in its own runtime against the eager model."""
from .export import EXPORT_FORMATS, EXPORT_SUFFIXES, ExportError, export_model
from .optimize import BACKENDS, PRECISIONS, OptimizedModel, fold_batchnorm, optimize_for_inference, tune_glibc_malloc
from .quantize import CalibrationError, bf16_supported, quantize
from .runtimes import RUNTIMES, Runtime

__all__ = [
    "BACKENDS",
    "CalibrationError",
    "EXPORT_FORMATS",
    "EXPORT_SUFFIXES",
    "ExportError",
    "OptimizedModel",
    "PRECISIONS",
    "RUNTIMES",
    "Runtime",
    "export_model",
    "bf16_supported",
    "fold_batchnorm",
    "optimize_for_inference",
    "quantize",
    "tune_glibc_malloc",
]
