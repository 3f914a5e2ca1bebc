"""dszoo models: config schema and loader, the generic builder, the registry and profiling."""
from .builder import BLOCK_BUILDERS, ZooNet, build_model, make_divisible
from .config import ConfigError, ModelConfig
from .profile import count_macs, count_params, layer_macs
from .registry import UnknownModelError, create_model, get_model_config, list_models, register_model
from .summary import ModelSummary, summarize

__all__ = [
    "BLOCK_BUILDERS",
    "ConfigError",
    "ModelConfig",
    "ModelSummary",
    "UnknownModelError",
    "ZooNet",
    "build_model",
    "count_macs",
    "count_params",
    "create_model",
    "get_model_config",
    "layer_macs",
    "list_models",
    "make_divisible",
    "register_model",
    "summarize",
]
