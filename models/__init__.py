"""dszoo models: config schema and loader, the generic builder, the registry and profiling."""
from .builder import BLOCK_BUILDERS, ZooFeatures, ZooNet, build_model
from .plan import ModelPlan, ModelTooLargeError, make_divisible, min_input_size, plan_model
from .config import ConfigError, ModelConfig, config_json_schema
from .profile import count_macs, count_params, layer_macs
from .registry import UnknownModelError, create_model, get_model_config, list_models, register_model
from .inference import OptimizedModel, fold_batchnorm, optimize_for_inference, tune_glibc_malloc
from .summary import ModelSummary, summarize
from .weights import CheckpointError, export_to_timm, load_pretrained, read_state_dict, save_state_dict

__all__ = [
    "BLOCK_BUILDERS",
    "CheckpointError",
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
    "export_to_timm",
    "fold_batchnorm",
    "get_model_config",
    "layer_macs",
    "list_models",
    "load_pretrained",
    "read_state_dict",
    "save_state_dict",
    "make_divisible",
    "min_input_size",
    "optimize_for_inference",
    "plan_model",
    "register_model",
    "summarize",
    "tune_glibc_malloc",
]
