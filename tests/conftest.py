"""Shared helpers: a small input each registered model accepts; a command's module;
hypothesis profiles."""
from __future__ import annotations

import functools
import importlib
import io
import json
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Callable, Optional, Sequence
from types import ModuleType

import pytest
import torch
from hypothesis import HealthCheck, settings

# Under pytest-xdist (the README's command: two workers on two cores) each worker computes on one
# thread: two workers of two threads each would oversubscribe the cores, and oneDNN's threads
# spin while they wait. Alone, the tests use both cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"  # and so do the processes the tests start

# Property-based tests: a modest number of examples by default (CI), more on request:
#   pytest --hypothesis-profile=thorough tests/test_fuzz_configs.py
_QUIET = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=100, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.register_profile("thorough", max_examples=2000, deadline=None, suppress_health_check=_QUIET, print_blob=True)
settings.load_profile("ci")

# Python code that makes a process see this checkout as not installed: setuptools' editable
# finder is taken out before anything imports dszoo.
NOT_INSTALLED = "import sys; sys.meta_path[:] = [f for f in sys.meta_path if '__editable__' not in f.__module__]; "


LARGE_MODEL_PARAMS = 25_000_000


@functools.cache  # computed once a process: each test module asks at collection
def registry() -> tuple[str, ...]:
    """The registered models the per-model interface tests build: all but those above
    ``LARGE_MODEL_PARAMS`` parameters (EfficientNet-B5, EfficientNetV2-M/L/XL and their ports,
    EfficientNetV2-rw-M, MobileNetV4 conv and hybrid large), which are wider and deeper stacks of
    the blocks of smaller registered models. Those are checked where it costs little: parameter
    and MAC counts against timm's twins and the weight maps, on the meta device. Building a
    208M-parameter network a dozen times would cost the test command a minute."""
    from dszoo import get_model_config, list_models, plan_model

    return tuple(name for name in list_models() if plan_model(get_model_config(name)).params <= LARGE_MODEL_PARAMS)


@functools.cache  # computed once a process: each test module asks at collection
def structural_variants() -> tuple[str, ...]:
    """One registered model per distinct network: variants that differ only in ``width_mult``,
    ``depth_mult``, their rows' written widths (``out``: ShuffleNetV2's, MobileOne's), input size
    or dropout (MobileNetV1/V2 widths, EfficientNet B1-B3) run the same blocks as the first of them. The costly per-model tests (compile, int8, BN folding,
    scripting) run on these; the cheap ones on the whole registry."""
    from dszoo import get_model_config

    first: dict[str, str] = {}
    for name in registry():
        shape = get_model_config(name).model_dump(mode="json")
        for key in ("name", "paper", "timm_name", "torchvision_name", "width_mult", "depth_mult", "input_size",
                    "min_input_size", "pretrained_cfg"):
            shape.pop(key)
        shape["head"]["dropout"] = 0.0
        for row in (*shape["stem"], *shape["stages"]):
            row.pop("out")
        first.setdefault(json.dumps(shape, sort_keys=True), name)
    return tuple(sorted(first.values()))


def mechanisms(cfg) -> frozenset[str]:
    """What a model's forward pass is made of, as the costly tests see it: its block kinds and
    their options (squeeze-excite and its gate, mixed and grouped convs, attention, reparameterised
    and separable rows, skips), activations, norm, padding rules, head and input norm, from its
    ``ModelConfig``."""
    out = {f"norm:{cfg.norm.type}", f"padding:{cfg.padding}", f"row_padding:{cfg.row_padding}", f"act:{cfg.act}",
           f"input_norm:{cfg.input_norm}"}
    for spec in (*cfg.stem, *cfg.stages):
        out |= {f"type:{spec.type}", f"act:{spec.act or cfg.act}"}
        out |= {f"{spec.type}:{key}" for key in ("se_ratio", "kernels", "attention", "separable", "skip", "start_kernel",
                                                 "end_kernel", "bias", "rep", "rep_branches") if getattr(spec, key, None)}
        out |= {f"{spec.type}:groups" for key in ("expand_groups", "project_groups") if getattr(spec, key, 1) > 1}
    if any(getattr(spec, "se_ratio", 0) for spec in cfg.stages):
        out.add(f"se:{cfg.se.gate}")
    if cfg.head.conv is not None:
        out.add(f"head_conv:norm={cfg.head.conv.norm}")
    if cfg.head.norm:
        out.add("head:norm")
    out.add(f"head:classifier={cfg.head.classifier}" + ",distilled" * cfg.head.distilled)
    if cfg.layer_scale is not None:
        out.add("layer_scale")
    return frozenset(out)


@functools.cache  # computed once a process: each test module asks at collection
def mechanism_cover() -> tuple[str, ...]:
    """The fewest models whose forward passes together contain every mechanism of the registry
    (``mechanisms``: a greedy cover over ``structural_variants``, weighing each model's cost).
    The costliest tests (compiling, int8, scripting, BatchNorm folding) run on these: a mechanism
    that compiles, quantizes and scripts in one network does in another."""
    from dszoo import get_model_config, plan_model

    candidates = {name: mechanisms(get_model_config(name)) for name in structural_variants()}
    params = {name: plan_model(get_model_config(name)).params for name in candidates}
    left, chosen = set().union(*candidates.values()), []
    while left:  # most new mechanisms per unit of cost (parameters, a square root: a big model is slow, not useless)
        name = min(candidates, key=lambda n: (-len(candidates[n] & left) / params[n] ** 0.5, n))
        chosen.append(name)
        left -= candidates[name]
    for name in sorted(chosen, key=lambda n: -params[n]):  # then drop any the others cover
        rest = [n for n in chosen if n != name]
        if set().union(*(candidates[n] for n in rest)) >= candidates[name]:
            chosen = rest
    return tuple(sorted(chosen))


_ROW_SIZES = ("out", "repeat", "dropout", "width", "scale_depth", "same_stage")
"""Row keys that size a block or name its stage but build no other layers."""


def _row_shape(row: dict) -> str:
    """What a config row builds, sizes aside: each number as 0, 1, more than 1, or a fraction
    (a kernel of 1 or 3, a stride of 1 or 2, an expansion of 1 or 6 build different layers; a
    kernel of 3 or 5 the same ones), a list of several (mixed kernels) as one kind."""
    def kind(value):
        if isinstance(value, (list, tuple)):
            return "several" if len(value) > 1 else kind(value[0]) if value else []
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return value
        return 0 if value == 0 else 1 if value == 1 else "many" if value > 1 else "fraction"

    return json.dumps({key: kind(value) for key, value in row.items() if key not in _ROW_SIZES}, sort_keys=True)


def shallow_overrides(name: str) -> dict:
    """The config overrides of ``create_shallow(name)``: each kind of config row once
    (``_row_shape``: the first row of each), at most two blocks deep (its first block, which may
    change the shape, and one that keeps it), depth multiplier 1."""
    from dszoo import get_model_config

    cfg = get_model_config(name)
    stages, seen = [], set()
    for spec, repeats in zip(cfg.stages, cfg.stage_repeats()):
        row = spec.model_dump()
        if _row_shape(row) not in seen:
            seen.add(_row_shape(row))
            stages.append({**row, "repeat": min(repeats, 2), "same_stage": False})
    return {"stages": stages, "depth_mult": 1.0}


def create_shallow(name: str, **overrides) -> torch.nn.Module:
    """``create_model(name, **overrides)`` with ``shallow_overrides``: every row kind, so every
    mechanism, of the network (``test_a_shallow_model_keeps_every_mechanism``) for the costliest
    tests, whose cost (tracing, compiling, quantizing) grows with the number of blocks."""
    from dszoo import create_model

    return create_model(name, **shallow_overrides(name), **overrides)


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
    return importlib.import_module(f"dszoo.commands.{name}")


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


def _once_a_session(tmp_path_factory: pytest.TempPathFactory, name: str,
                    run: Callable[[Path], subprocess.CompletedProcess]) -> tuple[Path, subprocess.CompletedProcess]:
    """``run(folder)`` once per test session, in the folder ``name`` of the session's common
    temporary folder: that folder and the finished process.

    Under pytest-xdist the workers share one run: the first to need it runs it while holding a
    file lock in the session's common folder, the others wait and read its result. (xdist's
    ``xdist_group`` does not group tests under pytest 9.2, whose node ids it can no longer
    rewrite, so each worker would run its own.)"""
    from filelock import FileLock  # a dependency of torch

    worker = os.environ.get("PYTEST_XDIST_WORKER")
    shared = tmp_path_factory.getbasetemp().parent if worker else tmp_path_factory.getbasetemp()
    folder, record = shared / name, shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not record.is_file():
            folder.mkdir(exist_ok=True)
            res = run(folder)
            record.write_text(json.dumps({"args": [str(a) for a in res.args], "returncode": res.returncode,
                                          "stdout": res.stdout, "stderr": res.stderr}))
        saved = json.loads(record.read_text())
    return folder, subprocess.CompletedProcess(saved["args"], saved["returncode"], saved["stdout"], saved["stderr"])


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's main job, exactly as a user runs it (only the output folder differs), once
    per session: its output folder and the finished process. Tests that need a trained model use it."""
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"

    def train(cwd: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), "--out-dir", str(cwd / "run")], capture_output=True,
                              text=True, cwd=cwd)

    cwd, res = _once_a_session(tmp_path_factory, "default_run", train)
    return cwd / "run", res


QAT_ARGS = ("--qat", "--epochs", "2", "--deterministic", "--lr", "0.001", "--max-batches", "4")
"""Quantization-aware fine-tuning of the main job's model (``--pretrained`` its best.pt), as
``qat_run`` ran it."""


@pytest.fixture(scope="session")
def qat_run(tmp_path_factory: pytest.TempPathFactory,
            default_run: tuple[Path, subprocess.CompletedProcess]) -> tuple[Path, subprocess.CompletedProcess]:
    """``dszoo-train`` with ``QAT_ARGS`` from the main job's model, once per session (in this
    process): its output folder and the finished command."""
    out, trained = default_run
    assert trained.returncode == 0, trained.stderr

    def train(folder: Path) -> subprocess.CompletedProcess:
        return run_in_process("train", [*QAT_ARGS, "--pretrained", str(out / "best.pt"), "--out-dir",
                                        str(folder / "run"), "-q"])

    folder, res = _once_a_session(tmp_path_factory, "qat_run", train)
    return folder / "run", res


@pytest.fixture(scope="session")
def built(request: pytest.FixtureRequest) -> torch.nn.Module:
    """``create_model(name).eval()`` for the tests parametrised with ``by_name(names)``, built
    once for all of them: pytest runs the tests of one name in a row and keeps one model at a
    time. They must leave it as they found it (no hooks, no new head, no other dtype)."""
    from dszoo import create_model

    return create_model(request.param).eval()


def by_name(names: Sequence[str]) -> pytest.MarkDecorator:
    """Parametrise a test over ``names`` with the ``built`` model of each (shared, read-only)."""
    return pytest.mark.parametrize("built", names, indirect=True, scope="session")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
