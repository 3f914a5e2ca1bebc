"""Training: the fine-tuning loop (``loop``), its datasets (``data``) and the files a run
writes (``run_files``). ``models.commands.train`` is its command-line front."""
from .data import DATASETS, DataSplits, build_datasets
from .loop import TrainConfig, TrainResult, evaluate, frozen_parts, train, uses_channels_last, validation_shard
from .run_files import CHECKPOINT_FORMAT, RUN_FILES, load_checkpoint

__all__ = [
    "CHECKPOINT_FORMAT",
    "DATASETS",
    "DataSplits",
    "RUN_FILES",
    "TrainConfig",
    "TrainResult",
    "build_datasets",
    "evaluate",
    "frozen_parts",
    "load_checkpoint",
    "train",
    "uses_channels_last",
    "validation_shard",
]
