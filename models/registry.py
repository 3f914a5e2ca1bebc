"""Model registry: every variant of every ``configs/*.yaml`` file, plus user registrations.

The built-in families are discovered from the config files themselves, so no model depends on
an import someone might forget (mmpretrain's pitfall).
"""
from __future__ import annotations

import fnmatch
import warnings
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from torch import nn

from .builder import ZooFeatures, build_model
from .config import ConfigError, ModelConfig, close_matches, load_family_file
from .plan import resolve_config

__all__ = ["UnknownModelError", "create_model", "get_model_config", "list_models", "register_model"]

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


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, sorted."""
    _ensure_builtin()
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


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


def get_model_config(name: str, **overrides: Any) -> ModelConfig:
    """The validated, immutable config ``create_model(name, **overrides)`` would build."""
    resolved, entry = _lookup(name)
    return resolve_config(resolved, entry.family, entry.defaults, entry.variant, overrides, entry.source)


def create_model(
    name: str,
    *,
    pretrained: Union[PathLike, bool, None] = None,
    features_only: bool = False,
    out_indices: Optional[Sequence[int]] = None,
    allow_large: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a model by registered name or YAML path.

    Args:
        name: a name from ``list_models()``, a YAML file, or ``file.yaml:variant``.
        pretrained: a checkpoint of ours or a timm state dict (``dszoo.load_pretrained``); True:
            the weights the package ships for it (config key ``bundled_weights``), else timm's
            from the local cache (``dszoo.weights.cached_timm_weights``).
        features_only: return a ``ZooFeatures`` backbone giving the ``feature_info`` maps.
        out_indices: which feature levels ``features_only`` returns (default: all).
        allow_large: build even above ``dszoo.plan.MAX_PARAMS`` parameters or
            ``MAX_ACTIVATION_BYTES`` of activations per image (else ``ModelTooLargeError``).
        **overrides: ``num_classes``, ``in_chans``, ``width_mult``, ``drop_rate``,
            ``input_size`` (int, (H, W) or (C, H, W)), ``separable`` or any top-level config key.
    """
    model = build_model(get_model_config(name, **overrides), allow_large)
    if pretrained is True:
        from .weights import bundled_weights, cached_timm_weights

        pretrained = bundled_weights(model.cfg) if model.cfg.bundled_weights else cached_timm_weights(model.cfg)
    if pretrained is not None and pretrained is not False:
        from .weights import load_pretrained

        report = load_pretrained(model, pretrained)
        for note in report["notes"]:
            warnings.warn(f"{pretrained}: {note}", stacklevel=2)
        if report["head_reset"]:
            warnings.warn(
                f"{pretrained}: classifier shape differs from num_classes={model.num_classes}; "
                "the head was freshly initialised", stacklevel=2,
            )
    if features_only:
        return ZooFeatures(model, tuple(range(len(model.feature_info))) if out_indices is None else out_indices)
    if out_indices is not None:
        raise ValueError("out_indices needs features_only=True")
    return model
