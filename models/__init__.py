"""dszoo: efficient CNNs from depthwise-separable convolutions.

This folder (``models/`` in the repository) is the package ``dszoo``; ``dszoo.blocks`` is the
repository's top-level ``blocks/`` and ``dszoo.configs`` its ``configs/`` (setup.cfg's
``package_dir``), so ``from .blocks import ...`` here reads ``blocks/``.

The model library sits at this package's top: ``config`` (schema, loader), ``plan`` (shapes and
counts from a config alone, the size guard), ``builder`` (``ZooNet``), ``reparameterize`` (a
network's single-conv inference form), ``weights`` (timm's and
torchvision's keys), ``checkpoints`` (what training saved), ``registry`` (``create_model``,
``load_checkpoint``), ``preprocessing`` (the input a model expects) and ``profile`` (params,
MACs, bytes per layer). Above it, one subpackage per job: ``audio`` (the MFCC front end, speech
data, spotting) and ``deployment`` (optimize, int8, export), ``training`` on them,
``measurement`` (summary, profiler, benchmark), and ``commands``, the command-line fronts over
all of them. Every module imports only downward (tests/test_import_layers.py).
"""
from .builder import BLOCK_BUILDERS, ZooFeatures, ZooNet, build_model
from .plan import ModelPlan, ModelTooLargeError, make_divisible, min_input_size, plan_model
from .config import ConfigError, ModelConfig, config_json_schema
from .profile import count_macs, count_params, layer_macs
from .reparameterize import reparameterize
from .registry import (UnknownModelError, create_model, get_model_config, imagenet_top1, list_models, load_checkpoint,
                       register_model)
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
    "imagenet_top1",
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
    "reparameterize",
    "summarize",
    "tune_glibc_malloc",
]
