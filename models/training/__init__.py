"""Training: the fine-tuning loop (``loop``), its options (``options``), devices and evaluation
(``runtime``), its datasets (``data``) and the files a run writes (``run_files``).
``dszoo.commands.train`` is its command-line front."""
from .data import DATASETS, DataSplits, build_datasets
from .loop import frozen_parts, train
from .options import TrainConfig, TrainResult, check_arguments, check_memory
from .runtime import amp_dtype, evaluate, grad_scaler, uses_channels_last, validation_shard
from .run_files import CHECKPOINT_FORMAT, RUN_FILES, read_checkpoint


def load_checkpoint(path: str, what: str = "--resume") -> dict:
    """Deprecated name of ``read_checkpoint`` (a training checkpoint's fields, checked); for the
    trained model itself use ``dszoo.load_checkpoint``."""
    import warnings

    warnings.warn("dszoo.training.load_checkpoint is now read_checkpoint; dszoo.load_checkpoint gives the model",
                  DeprecationWarning, stacklevel=2)
    return read_checkpoint(path, what)


__all__ = [
    "CHECKPOINT_FORMAT",
    "DATASETS",
    "DataSplits",
    "RUN_FILES",
    "TrainConfig",
    "TrainResult",
    "amp_dtype",
    "build_datasets",
    "check_arguments",
    "check_memory",
    "evaluate",
    "frozen_parts",
    "grad_scaler",
    "load_checkpoint",
    "read_checkpoint",
    "train",
    "uses_channels_last",
    "validation_shard",
]
