"""Shared helpers: a small input each registered model accepts; a command's module;
hypothesis profiles."""
from __future__ import annotations

import importlib
import io
import os
import subprocess
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Optional, Sequence
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings

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


def command_module(name: str) -> ModuleType:
    """The module behind ``scripts/<name>.py`` and ``dszoo-<name>`` (its ``main`` callable with
    an argv list)."""
    return importlib.import_module(f"models.commands.{name}")


def run_in_process(name: str, args: Sequence[str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    """Command ``name`` run in this process as its console entry point runs it (``cli``: user
    errors as one line and exit code 2), from ``cwd``, with its output captured. Far cheaper
    than a new Python process, which spends seconds importing torch; the tests that run the
    scripts as processes are in test_commands.py."""
    out, err = io.StringIO(), io.StringIO()
    here = os.getcwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with redirect_stdout(out), redirect_stderr(err):
            code = command_module(name).cli(list(args))
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess([name, *args], code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
