"""What training leaves behind, read back: a ``dszoo-train`` checkpoint (``last.pt``,
``best.pt``) or a keyword spotter file (``save_spotter``), checked field by field and rebuilt
into the network it saved, from its own config. ``dszoo.load_checkpoint`` is the public front.

Only ``torch.load(weights_only=True)`` and safetensors are used: no arbitrary unpickling.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch

from .builder import ZooNet, build_model
from .config import ModelConfig
from .errors import UsageError
from .files import FileKindError, regular_file
from .plan import plan_model
from .preprocessing import trained_front_end
from .weights import (CHECKPOINT_FORMAT, CheckpointError, check_torch_file, checked_training_checkpoint, measured_weights,
                      read_state_dict, spotter_metadata, tensor_problems)

__all__ = ["CHECKPOINT_FORMAT", "DEFAULT_THRESHOLD", "build_from_checkpoint", "read_checkpoint", "read_spotter_file",
           "read_trained_file", "read_training_checkpoint"]

PathLike = Union[str, Path]

DEFAULT_THRESHOLD = 0.7
"""The smoothed probability a keyword must reach when the spotter's file names no threshold."""


def _unpickle(path: str, what: str) -> Any:
    """``torch.load(weights_only=True)`` of a regular file; a missing or special file is one
    ``UsageError``, anything torch cannot read raises as torch does."""
    try:
        regular_file(path, what)
        check_torch_file(path)
        with warnings.catch_warnings():  # torch's warnings about a file it then refuses: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except FileKindError as exc:
        raise UsageError(str(exc)) from None


def read_checkpoint(path: PathLike, what: str = "--resume") -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only``) and check that it has every field,
    of the right type; raise ``CheckpointError`` naming ``what`` (the option that gave it), the
    file and the field otherwise."""
    path = str(path)
    try:
        ckpt = _unpickle(path, what)
    except UsageError:
        raise
    except Exception as exc:  # corrupt, truncated or unsafe files all end here
        raise CheckpointError(f"{what} {path}: not a readable training checkpoint ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{what} {path}: not a dszoo training checkpoint (use --pretrained for weights)")
    return checked_training_checkpoint(ckpt, path, what)


def read_training_checkpoint(path: PathLike, what: str) -> Optional[dict[str, Any]]:
    """``path`` checked as ``read_checkpoint`` does if it is a dszoo training checkpoint; None
    for any other weights file (safetensors, a timm state dict), which ``load_pretrained`` reads."""
    path = str(path)
    if Path(path).suffix == ".safetensors":
        return None
    try:
        ckpt = _unpickle(path, what)
    except UsageError:
        raise
    except Exception:  # noqa: BLE001 - not a pickle we read: load_pretrained says what it is
        return None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        return None
    return checked_training_checkpoint(ckpt, path, what)


_SPOTTER_FIELDS: dict[str, tuple[type, ...]] = {"model_config": (dict,), "class_names": (list,), "mfcc_preset": (str,),
                                                 "threshold": (int, float), "card": (dict,)}
"""The fields a spotter file's metadata may hold, and their JSON types."""


def read_spotter_file(path: Path) -> dict:
    """A ``save_spotter`` file as a checkpoint-like mapping (model, model_config, class_names ...)."""
    state = read_state_dict(path)
    meta = spotter_metadata(path)
    if meta is None:
        raise UsageError(f"{path}: weights alone, not a keyword spotter (save one with dszoo-eval-speech "
                         "--save-spotter, or pass a dszoo-train checkpoint)")
    try:
        about = json.loads(meta)
        threshold = float(about.get("threshold", DEFAULT_THRESHOLD))
    except (ValueError, TypeError, AttributeError):
        raise UsageError(f"{path}: its spotter metadata is damaged") from None
    wrong = [f"{key} is a {type(about[key]).__name__}, not a {' or '.join(t.__name__ for t in types)}"
             for key, types in _SPOTTER_FIELDS.items()
             if key in about and (not isinstance(about[key], types) or isinstance(about[key], bool))]
    if wrong:
        raise UsageError(f"{path}: its spotter metadata is damaged: {'; '.join(wrong)}")
    if not 0 < threshold < 1:
        raise UsageError(f"{path}: threshold {threshold} in its metadata; allowed: between 0 and 1")
    return {**about, "model": state, "threshold": threshold}


def read_trained_file(path: PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """A ``dszoo-train`` checkpoint (``.pt``) or a keyword spotter file (``.safetensors``), as the
    checkpoint-like mapping ``build_from_checkpoint`` takes."""
    path = Path(path)
    return read_spotter_file(path) if path.suffix == ".safetensors" else read_checkpoint(path, what)


def build_from_checkpoint(ckpt: Mapping[str, Any], source: str) -> ZooNet:
    """The network a training checkpoint or spotter file saved, built from its own
    ``model_config`` (not from a registered name that may have been edited since, and with its
    own classes and input size), with its weights (``weights.measured_weights``: the EMA's after
    ``--ema``); its ``pretrained_cfg`` names its classes and, for a speech run, its MFCC front end.
    ``CheckpointError`` in one line for a config, weights or ``class_names`` that do not fit."""
    from pydantic import ValidationError

    saved = ckpt.get("model_config")
    if not isinstance(saved, Mapping):
        raise CheckpointError(f"{source}: the checkpoint holds no model_config (written by an older dszoo); pass --model")
    try:
        cfg = ModelConfig.model_validate(dict(saved))
    except ValidationError as err:
        problem = err.errors()[0]
        where = ".".join(map(str, problem["loc"])) or "<top level>"
        raise CheckpointError(f"{source}: its model_config is damaged ({where}: {problem['msg']})") from None
    head = ckpt["model"].get("classifier.weight")
    if isinstance(head, torch.Tensor) and head.dim() == 2 and head.shape[0] != cfg.num_classes:
        cfg = cfg.model_copy(update={"num_classes": head.shape[0]})  # saved before configs followed reset_classifier
    classes = ckpt.get("class_names")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) and c for c in classes)
                                    and len(set(classes)) == len(classes) == cfg.num_classes):
        raise CheckpointError(f"{source}: class_names must be {cfg.num_classes} distinct non-empty names, one per "
                              f"output of the model, got {str(classes)[:120]}")
    state = measured_weights(ckpt)
    planned, held = plan_model(cfg).params, sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    if planned > held:  # checked from the closed form, before a network the file cannot fill is allocated
        raise CheckpointError(f"{source}: its model_config builds {planned:,} parameters, but it holds {held:,} "
                              "numbers: its weights are those of another network")
    model = build_model(cfg)
    own = model.state_dict()
    problems = ([f"its weights are those of another network ({len(state)} tensors, its config builds {len(own)})"]
                if state.keys() != own.keys() else
                [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(own[k].shape)} from its config"
                 for k, v in state.items() if v.shape != own[k].shape])
    problems = problems or tensor_problems(state, own)
    if problems:
        raise CheckpointError(f"{source}: its weights do not fit its own model_config: {'; '.join(problems[:3])}")
    model.load_state_dict(state)
    extra: dict[str, Any] = {}
    if classes:
        extra["class_names"] = list(classes)
    config = ckpt.get("config")
    spotter_file = "threshold" in ckpt  # read_spotter_file gives every spotter file one
    if spotter_file or (isinstance(config, Mapping) and config.get("dataset") == "speech_commands"):
        try:
            extra["mfcc"] = trained_front_end(dict(ckpt), source)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from None
    model.pretrained_cfg = {**model.pretrained_cfg, **extra}
    return model
