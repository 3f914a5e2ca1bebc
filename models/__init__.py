"""dszoo: efficient CNNs from depthwise-separable convolutions.

The model library sits at this package's top: ``config`` (schema, loader), ``plan`` (shapes and
counts from a config alone, the size guard), ``builder`` (``ZooNet``), ``registry``
(``create_model``), ``weights`` (checkpoints, timm's keys) and ``profile`` (params, MACs, bytes
per layer). Around it, one subpackage per job, each importing the library and nothing beside
it: ``audio`` (the MFCC front end, speech data, spotting), ``training``, ``deployment``
(optimize, export), ``measurement`` (summary, profiler, benchmark), and ``commands``, the command-line fronts over all of them.
"""
from .builder import BLOCK_BUILDERS, ZooFeatures, ZooNet, build_model
from .plan import ModelPlan, ModelTooLargeError, make_divisible, min_input_size, plan_model
from .config import ConfigError, ModelConfig, config_json_schema
from .profile import count_macs, count_params, layer_macs
from .registry import UnknownModelError, create_model, get_model_config, list_models, load_checkpoint, register_model
from .audio import MFCC
from .deployment import (CalibrationError, OptimizedModel, export_model, fold_batchnorm, optimize_for_inference, quantize,
                         tune_glibc_malloc)
from .measurement import ModelSummary, summarize
from .weights import CheckpointError, export_to_timm, load_pretrained, read_state_dict, save_state_dict

__all__ = [
    "BLOCK_BUILDERS",
    "CalibrationError",
    "CheckpointError",
    "MFCC",
    "ConfigError",
    "ModelConfig",
    "ModelPlan",
    "ModelSummary",
    "ModelTooLargeError",
    "OptimizedModel",
    "UnknownModelError",
    "ZooFeatures",
    "ZooNet",
    "build_model",
    "config_json_schema",
    "count_macs",
    "count_params",
    "create_model",
    "export_model",
    "export_to_timm",
    "fold_batchnorm",
    "get_model_config",
    "layer_macs",
    "list_models",
    "load_checkpoint",
    "load_pretrained",
    "read_state_dict",
    "save_state_dict",
    "make_divisible",
    "min_input_size",
    "optimize_for_inference",
    "plan_model",
    "quantize",
    "register_model",
    "summarize",
    "tune_glibc_malloc",
]
