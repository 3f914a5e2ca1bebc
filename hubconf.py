"""torch.hub entry points: ``torch.hub.load(repo_dir, "mobilenet_v1", source="local", num_classes=10)``.

One entry per registered model, generated from the registry so none can be forgotten. Importing
this file also makes ``import dszoo`` work from a checkout that is not installed (torch.hub's
case, and ``python scripts/<command>.py``): the package's folders are mapped as setup.cfg's
``package_dir`` maps them for an install, read from that file so the two cannot disagree.
"""
from __future__ import annotations

import configparser
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

CHECKOUT = Path(__file__).resolve().parent


class _CheckoutFinder(importlib.abc.MetaPathFinder):
    """Finds ``dszoo`` and its mapped subpackages (``dszoo.blocks`` -> ``blocks/``) in a checkout."""

    def __init__(self, root: Path) -> None:
        cfg = configparser.ConfigParser()
        cfg.read(root / "setup.cfg")
        lines = cfg["options"]["package_dir"].strip().splitlines()
        self.folders = {name.strip(): root / folder.strip() for name, _, folder in (ln.partition("=") for ln in lines)}

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Any = None) -> Optional[importlib.machinery.ModuleSpec]:
        folder = self.folders.get(fullname)
        if folder is None:
            return None  # submodules of a mapped folder are found the ordinary way
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def _use_checkout() -> None:
    """Import ``dszoo`` from this checkout unless it is imported already."""
    if "dszoo" not in sys.modules and not any(isinstance(f, _CheckoutFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _CheckoutFinder(CHECKOUT))


_use_checkout()

from dszoo import create_model, list_models  # noqa: E402

dependencies = ["torch", "timm", "yaml", "pydantic"]


def _entry(name: str) -> Callable[..., Any]:
    def entry(**kwargs: Any) -> Any:
        return create_model(name, **kwargs)

    entry.__name__ = name
    entry.__doc__ = f"dszoo {name}; keyword arguments go to dszoo.create_model."
    return entry


for _name in list_models():
    globals()[_name] = _entry(_name)
