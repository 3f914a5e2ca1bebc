"""Deployment: compiling a model for inference (``optimize``) and exporting it to TorchScript,
ONNX or ``.pt2`` files (``export``), each checked against the eager model."""
from .export import EXPORT_FORMATS, EXPORT_SUFFIXES, ExportError, export_model
from .optimize import BACKENDS, OptimizedModel, fold_batchnorm, optimize_for_inference, tune_glibc_malloc

__all__ = [
    "BACKENDS",
    "EXPORT_FORMATS",
    "EXPORT_SUFFIXES",
    "ExportError",
    "OptimizedModel",
    "export_model",
    "fold_batchnorm",
    "optimize_for_inference",
    "tune_glibc_malloc",
]
