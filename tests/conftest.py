"""Shared helpers: a small input each registered model accepts; loading a script as a module;
hypothesis profiles."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings
from torch import nn

torch.set_num_threads(2)

# Property-based tests: a modest number of examples by default (CI), more on request:
#   pytest --hypothesis-profile=thorough tests/test_fuzz_configs.py
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.load_profile("ci")


def small_input_size(cfg) -> tuple[int, int, int]:
    """The smallest cheap input for a model: 64x64 images, the native size for audio models."""
    c, h, w = cfg.input_size
    min_h, min_w = cfg.min_input_size or (1, 1)
    if h * w <= 64 * 64:
        return c, h, w
    return c, max(64, min_h), max(64, min_w)


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (its ``main`` callable with an argv list)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def with_random_bn_statistics(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial affine weights and running statistics; eval mode."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.normal_(1.0, 0.2)
                m.bias.normal_(0.0, 0.2)
                m.running_mean.normal_(0.0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()
