"""torch.hub entry points: ``torch.hub.load(repo_dir, "mobilenet_v1", source="local", num_classes=10)``.

One entry per registered model, generated from the registry so none can be forgotten.
"""
from __future__ import annotations

import os
import sys
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # hub imports this file by path

from models import create_model, list_models  # noqa: E402

dependencies = ["torch", "timm", "yaml", "pydantic"]


def _entry(name: str) -> Callable[..., Any]:
    def entry(**kwargs: Any) -> Any:
        return create_model(name, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"dszoo {name}; keyword arguments go to models.create_model."
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
