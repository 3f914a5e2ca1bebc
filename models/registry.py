"""Model registry: every variant of every ``configs/*.yaml`` file, plus user registrations.

The built-in families are discovered from the config files themselves, so no model depends on
an import someone might forget (mmpretrain's pitfall).
"""
from __future__ import annotations

import csv
import fnmatch
import functools
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from .builder import ZooFeatures, ZooNet, build_model
from .checkpoints import build_from_checkpoint, read_trained_file
from .config import ConfigError, ModelConfig, close_matches, config_changes, load_family_file
from .plan import resolve_config
from .weights import CheckpointError, bundled_weights, cached_timm_weights, load_pretrained, read_weights_file

__all__ = ["UnknownModelError", "create_model", "get_model_config", "imagenet_top1", "list_models", "load_checkpoint",
           "model_from_checkpoint", "register_model", "timm_aliases"]

PathLike = Union[str, Path]


class UnknownModelError(ValueError):
    """A model name that is neither registered nor a config file."""


@dataclass(frozen=True)
class _Entry:
    family: str
    defaults: Mapping[str, Any]
    variant: Mapping[str, Any] = field(default_factory=dict)
    source: str = "<register_model>"


_REGISTRY: dict[str, _Entry] = {}
_BUILTIN_LOADED = False


def _config_files() -> list[Path]:
    root = resources.files(f"{__package__}.configs")
    return sorted(Path(str(p)) for p in root.iterdir() if p.name.endswith((".yaml", ".yml")))


def _ensure_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    for path in _config_files():
        family, defaults, variants = load_family_file(path)
        for name, variant in variants.items():
            _REGISTRY.setdefault(name, _Entry(family, defaults, variant, f"configs/{path.name}"))


def register_model(name: str, config: Union[PathLike, Mapping[str, Any]], *, overwrite: bool = False) -> None:
    """Register ``name`` for a config mapping or a YAML file with exactly one variant.

    The config is validated now, so a bad one fails at registration, not at first use.
    """
    _ensure_builtin()
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"model {name!r} is already registered (pass overwrite=True to replace it)")
    if isinstance(config, Mapping):
        entry = _Entry(str(config.get("family", name)), {k: v for k, v in config.items() if k not in ("family", "name")})
    else:
        entry = _entry_from_file(str(config))
    resolve_config(name, entry.family, entry.defaults, entry.variant, {}, entry.source)
    _REGISTRY[name] = entry


def list_models(pattern: str = "*", pretrained: bool = False) -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted; with ``pretrained``
    only those ``create_model(name, pretrained=True)`` can load weights for: the shipped
    weights, or a timm name timm publishes weights for (loaded from timm's local cache)."""
    _ensure_builtin()
    names = sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))
    if pretrained:
        names = [n for n in names if _has_weights(_REGISTRY[n])]
    return names


def _setting(entry: _Entry, key: str) -> Any:
    return entry.variant.get(key, entry.defaults.get(key))


def _has_weights(entry: _Entry) -> bool:
    if _setting(entry, "bundled_weights"):
        return True
    timm_name = _setting(entry, "timm_name")
    if not timm_name:
        return False
    from timm.models import get_pretrained_cfg

    theirs = get_pretrained_cfg(timm_name)
    return theirs is not None and bool(theirs.hf_hub_id or theirs.url or theirs.file)


def timm_aliases() -> dict[str, str]:
    """timm's model name -> ours, for every registered model whose config names a ``timm_name``
    (``create_model`` and ``get_model_config`` accept either)."""
    _ensure_builtin()
    return {str(_setting(e, "timm_name")): n for n, e in sorted(_REGISTRY.items()) if _setting(e, "timm_name")}


@functools.cache
def published_top1_table() -> dict[str, tuple[float, str]]:
    """``configs/imagenet_top1.csv`` (made by ``scripts/make_imagenet_top1.py``): each registered
    model whose network has published ImageNet weights, its top-1 and where the figure comes from."""
    with resources.files(f"{__package__}.configs").joinpath("imagenet_top1.csv").open(newline="") as f:
        return {row["model"]: (float(row["top1"]), row["source"]) for row in csv.DictReader(f)}


def imagenet_top1(name: str) -> Optional[float]:
    """The published ImageNet-1k top-1 (%) of the weights timm or torchvision publish for the
    registered model ``name`` (or its timm name; ``published_top1_table`` names each figure's
    source), or ``None`` where none are published (our own widths, timm twins without weights,
    the audio models, a name ``register_model`` gave another network). An unknown name raises
    ``UnknownModelError``."""
    if _is_path(name):
        raise UnknownModelError(f"{name!r}: published figures belong to registered models, not to config files")
    resolved, entry = _lookup(name)
    found = published_top1_table().get(resolved) if entry.source.startswith("configs/") else None
    return found[0] if found else None


def _is_path(name: str) -> bool:
    return name.split(":", 1)[0].endswith((".yaml", ".yml")) or "/" in name or Path(name).is_file()


def _entry_from_file(spec: str) -> _Entry:
    """``path.yaml`` (one variant, or a flat config) or ``path.yaml:variant``."""
    path_str, _, wanted = spec.rpartition(":") if ".yaml:" in spec or ".yml:" in spec else (spec, "", "")
    path = Path(path_str).expanduser()
    family, defaults, variants = load_family_file(path)
    if not wanted:
        if len(variants) != 1:
            raise ConfigError(
                str(path),
                [f"variants: the file defines {len(variants)} models ({', '.join(variants)}); "
                 f"name one as '{path_str}:<variant>'"],
            )
        wanted = next(iter(variants))
    if wanted not in variants:
        hint = close_matches(wanted, list(variants))
        raise ConfigError(
            str(path),
            [f"variants: no variant {wanted!r}"
             + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
             + f" (defined: {', '.join(variants)})"],
        )
    return _Entry(family, defaults, variants[wanted], str(path))


def _lookup(name: str) -> tuple[str, _Entry]:
    _ensure_builtin()
    if name in _REGISTRY:
        return name, _REGISTRY[name]
    alias = timm_aliases().get(name)
    if alias is not None:
        return alias, _REGISTRY[alias]
    if _is_path(name):
        entry = _entry_from_file(name)
        variant = name.partition(".yaml:")[2] or name.partition(".yml:")[2]
        return variant or Path(name).stem, entry
    hint = close_matches(name, list(_REGISTRY))
    raise UnknownModelError(
        f"unknown model {name!r}"
        + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else "")
        + f" (available: {', '.join(sorted(_REGISTRY))})"
    )


_RESOLVED: dict[str, tuple[_Entry, ModelConfig]] = {}
"""Registered names already resolved without overrides, with the entry they were resolved from
(configs are immutable; validating one walks every layer, which costs milliseconds a call)."""


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The validated, immutable config ``create_model(name, **overrides)`` would build."""
    resolved, entry = _lookup(name)
    cached = _RESOLVED.get(resolved)
    if not overrides and cached is not None and cached[0] is entry:
        return cached[1]
    cfg = resolve_config(resolved, entry.family, entry.defaults, entry.variant, overrides, entry.source)
    if not overrides and _REGISTRY.get(resolved) is entry:  # a YAML file is read afresh each time
        _RESOLVED[resolved] = (entry, cfg)
    return cfg


def create_model(
    name: str,
    *,
    pretrained: Union[PathLike, bool, None] = None,
    checkpoint_path: Optional[PathLike] = None,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    allow_large: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a model by registered name or YAML path.

    Args:
        name: a name from ``list_models()`` or its timm name, a YAML file, or ``file.yaml:variant``.
        pretrained: weights to start from: a checkpoint of ours or a timm or torchvision state
            dict (``dszoo.load_pretrained``); a ``dszoo-train`` checkpoint or spotter file keeps
            its trained classes, channels and input size unless ``overrides`` name others. True:
            the weights the package ships for it (config key ``bundled_weights``), else timm's
            from the local cache (``dszoo.weights.cached_timm_weights``).
        checkpoint_path: a ``dszoo-train`` checkpoint or spotter file to rebuild exactly
            (``load_checkpoint``); ``name`` must be the network it saved.
        features_only: return a ``ZooFeatures`` backbone giving the ``feature_info`` maps.
        out_indices: which feature levels ``features_only`` returns (default: all).
        allow_large: build even above ``dszoo.plan.MAX_PARAMS`` parameters or
            ``MAX_ACTIVATION_BYTES`` of activations per image (else ``ModelTooLargeError``).
        **overrides: ``num_classes``, ``in_chans``, ``width_mult``, ``drop_rate``,
            ``input_size`` (int, (H, W) or (C, H, W)), ``separable`` or any top-level config key.
    """
    if checkpoint_path is not None:
        if pretrained not in (None, False) or overrides:
            raise ValueError("checkpoint_path rebuilds the network the checkpoint saved; pass no pretrained or "
                             f"overrides with it (given: {', '.join(['pretrained'] * bool(pretrained) + list(overrides))})")
        model = load_checkpoint(checkpoint_path)
        wanted = _lookup(name)[0]
        if model.cfg.name != wanted:
            raise CheckpointError(f"{checkpoint_path}: holds a trained {model.cfg.name}, not {wanted}")
        return _as_requested(model, features_only, out_indices)
    weights = None
    if pretrained is not None and pretrained is not True and pretrained is not False:
        weights = read_weights_file(pretrained)  # read once: its trained shape, then its tensors
        overrides = {**weights.trained_shape, **overrides}
    model = build_model(get_model_config(name, **overrides), allow_large)
    if pretrained is True:
        pretrained = bundled_weights(model.cfg) if model.cfg.bundled_weights else cached_timm_weights(model.cfg)
    if pretrained is not None and pretrained is not False:
        report = load_pretrained(model, weights if weights is not None else pretrained)
        for note in report["notes"]:
            warnings.warn(f"{pretrained}: {note}", stacklevel=2)
        if report["head_reset"]:
            warnings.warn(
                f"{pretrained}: classifier shape differs from num_classes={model.num_classes}; "
                "the head was freshly initialised", stacklevel=2,
            )
    return _as_requested(model, features_only, out_indices)


def _as_requested(model: ZooNet, features_only: bool, out_indices: Optional[Sequence[int]]) -> nn.Module:
    if features_only:
        return ZooFeatures(model, tuple(range(len(model.feature_info))) if out_indices is None else out_indices)
    if out_indices is not None:
        raise ValueError("out_indices needs features_only=True")
    return model


def model_from_checkpoint(ckpt: Mapping[str, Any], source: str) -> tuple[ZooNet, list[str]]:
    """``checkpoints.build_from_checkpoint``, and notes: how the registry's config of that name
    now differs from the one the checkpoint saved (the checkpoint's is the one built)."""
    model = build_from_checkpoint(ckpt, source)
    cfg = model.cfg
    try:
        current = get_model_config(cfg.name, num_classes=cfg.num_classes, input_size=cfg.input_size,
                                   width_mult=cfg.width_mult, separable=cfg.separable)
    except (UnknownModelError, ValueError):
        return model, []  # a user's YAML or a name registered no longer: nothing to compare
    ours, theirs = cfg.model_dump(mode="json"), current.model_dump(mode="json")
    ours["head"]["dropout"] = theirs["head"]["dropout"]  # drop_rate is a training option
    ours["bundled_weights"] = theirs.get("bundled_weights")  # where weights ship, not the network
    changes = config_changes(theirs, ours)
    if not changes:
        return model, []
    return model, [f"built {cfg.name} from the checkpoint's own config, which differs from the registry's now "
                   f"(registry -> checkpoint: {'; '.join(changes[:3])}{' ...' if len(changes) > 3 else ''})"]


def load_checkpoint(path: PathLike) -> ZooNet:
    """The trained network a ``dszoo-train`` checkpoint (``last.pt``, ``best.pt``) or a keyword
    spotter file (``.safetensors`` from ``dszoo-eval-speech --save-spotter``) saved, exactly: its
    own config, classes, input size and weights (the EMA's where the run averaged them), in
    evaluation mode. ``model.pretrained_cfg`` says what input it expects (``input_size``, ``mean``,
    ``std``, ... or ``mfcc``) and ``class_names`` where the run named its classes. How the
    registry's config of that name has changed since is a warning."""
    model, notes = model_from_checkpoint(read_trained_file(path), str(path))
    for note in notes:
        warnings.warn(f"{path}: {note}", stacklevel=2)
    return model.eval()
