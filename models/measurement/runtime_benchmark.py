"""Latency of each model in every runtime it deploys to, side by side in one run: PyTorch eager,
our optimized fp32 and int8 (``optimize_for_inference``), and each runtime of
``dszoo.deployment.runtimes`` in fp32 and int8, every file exported and checked as
``dszoo-export`` does, then timed in shuffled rounds on the same inputs (medians). The table a user
reads to choose a model and a runtime for a latency budget on their own machine.
"""
from __future__ import annotations

import copy
import csv
import io
import statistics
import tempfile
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import torch

from ..deployment.export import (ExportCheck, ExportError, export_model, has_initial_batchnorm_statistics,
                                 randomise_batchnorm_statistics)
from ..deployment.optimize import optimize_for_inference
from ..deployment.runtimes import EDGE_RUNTIMES, RUNTIMES
from ..profile import count_params
from ..registry import create_model, get_model_config, imagenet_top1
from .benchmark import machine_info, timed_interleaved

__all__ = ["ExportedFile", "RuntimeRow", "exported_files", "run_runtime_benchmarks", "runtime_accuracy", "runtime_csv",
           "runtime_markdown", "runtime_support"]


@dataclass(frozen=True)
class RuntimeRow:
    """One (model, runtime, precision, batch): median, fastest and slowest of the timed runs, the
    speed-up over PyTorch eager fp32 at the same batch, and the published ImageNet top-1 of the
    model's network (``dszoo.imagenet_top1``; None where no weights are published)."""

    model: str
    params: int
    runtime: str
    precision: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    speedup_vs_eager: float
    imagenet_top1: Optional[float] = None
    note: str = ""


def _set_runtime_threads(threads: Optional[int]) -> None:
    """The same thread count for PyTorch and ExecuTorch's XNNPACK thread pool (ONNX Runtime and
    OpenVINO take it when a file is loaded)."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    try:
        from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
    except ImportError:
        return
    _unsafe_reset_threadpool(threads)


@dataclass(frozen=True)
class ExportedFile:
    """One runtime's file of a model in one precision: the paths to ``load`` it from and how it
    was checked, or the error that stopped it."""

    runtime: str
    precision: str
    paths: tuple[str, ...] = ()
    check: Optional[ExportCheck] = None
    error: str = ""


def exported_files(model: torch.nn.Module, size: tuple[int, ...], runtimes: Sequence[str],
                   precisions: Sequence[str], calibration: Sequence[torch.Tensor], folder: Path,
                   catch: tuple[type[BaseException], ...] = (ExportError, RuntimeError, ValueError)
                   ) -> Iterator[ExportedFile]:
    """Each runtime's file of ``model`` in each precision it has, written to ``folder`` and
    checked by ``export_model`` (int8 calibrated on ``calibration``); an export that raises one
    of ``catch`` is yielded with its error."""
    for fmt in runtimes:
        runtime = RUNTIMES[fmt]
        for precision in (p for p in precisions if p in runtime.precisions):
            out = Path(folder) / f"{fmt}-{precision}{runtime.suffixes[0]}"
            try:
                check = export_model(model, fmt, out, size, precision=precision,
                                     calibration=list(calibration) if precision == "int8" else None)
            except catch as exc:
                yield ExportedFile(fmt, precision, error=f"{type(exc).__name__}: {' '.join(str(exc).split())}")
                continue
            yield ExportedFile(fmt, precision, (str(out), *map(str, runtime.companions(out))), check)


@torch.no_grad()
def run_runtime_benchmarks(models: Sequence[str], batch_sizes: Sequence[int] = (1, 8), repeats: int = 10,
                           runtimes: Sequence[str] = EDGE_RUNTIMES, precisions: Sequence[str] = ("fp32", "int8"),
                           threads: Optional[int] = None,
                           log: Callable[[str], None] = lambda s: None) -> dict:
    """Time every model in PyTorch eager, our optimized path and each of ``runtimes``, in each of
    ``precisions``, at each batch size, on ``threads`` threads (default: PyTorch's): rows of
    ``RuntimeRow`` and the machine, as a JSON-ready dict. Runtimes not installed are left out with
    a log line naming their extra."""
    _set_runtime_threads(threads)
    missing = {fmt: RUNTIMES[fmt].missing() for fmt in runtimes}
    for fmt, why in missing.items():
        if why:
            log(f"{fmt}: not timed, {why}")
    available = [fmt for fmt in runtimes if not missing[fmt]]
    rows: list[RuntimeRow] = []
    for name in models:
        model = create_model(name).eval()
        if has_initial_batchnorm_statistics(model):  # BatchNorm folds away: the same speed, outputs int8 can agree with
            model = randomise_batchnorm_statistics(copy.deepcopy(model))
        size, params = tuple(model.cfg.input_size), count_params(model)
        with tempfile.TemporaryDirectory() as folder:
            files = {}
            calibration = [torch.randn(8, *size) for _ in range(3)]
            for exported in exported_files(model, size, available, precisions, calibration, Path(folder)):
                if exported.error:
                    log(f"{name:<20} {exported.runtime} {exported.precision}: not timed, {exported.error[:200]}")
                    continue
                files[(exported.runtime, exported.precision)] = RUNTIMES[exported.runtime].load(exported.paths, threads)
            for batch in batch_sizes:
                x = torch.randn(batch, *size)
                fns: dict[tuple[str, str], Callable[[], object]] = {("pytorch eager", "fp32"): lambda: model(x)}
                for precision in precisions:
                    calibration = [torch.randn(8, *size) for _ in range(3)] if precision == "int8" else None
                    opt = optimize_for_inference(model, x, precision=precision, calibration=calibration)
                    if opt.precision != precision:
                        log(f"{name:<20} optimized {precision}: not timed, {opt.failures.get(precision, 'fell back')}")
                        continue
                    fns[("pytorch optimized", precision)] = lambda opt=opt: opt(x)
                fns.update({key: (lambda run=run: run(x)) for key, run in files.items()})
                times = timed_interleaved(fns, repeats)
                eager = statistics.median(times[("pytorch eager", "fp32")])
                for (runtime, precision), secs in times.items():
                    median = statistics.median(secs)
                    row = RuntimeRow(name, params, runtime, precision, batch, median * 1e3, min(secs) * 1e3,
                                     max(secs) * 1e3, eager / median, imagenet_top1(name))
                    log(f"{name:<20} {runtime:<18} {precision:<5} b{batch:<3} {row.median_ms:9.2f} ms "
                        f"{row.speedup_vs_eager:6.2f}x eager")
                    rows.append(row)
    return {"machine": machine_info(), "repeats": repeats, "rows": [asdict(r) for r in rows]}


def runtime_markdown(result: dict) -> str:
    """The rows as a markdown table, fastest first within each model and batch."""
    m = result["machine"]
    lines = [f"Latency by runtime, median of {result['repeats']} runs; {m['cpu']}, {m['threads']} threads, "
             f"torch {m['torch']}", "",
             "| model | params | ImageNet top-1 | batch | runtime | precision | median ms | vs eager fp32 |",
             "|---|---:|---:|---:|---|---|---:|---:|"]
    rows = sorted(result["rows"], key=lambda r: (r["model"], r["batch"], r["median_ms"]))
    top1 = {r["model"]: "-" if r.get("imagenet_top1") is None else f"{r['imagenet_top1']:.1f}%" for r in rows}
    lines += [f"| {r['model']} | {r['params'] / 1e6:.2f}M | {top1[r['model']]} | {r['batch']} | {r['runtime']} | "
              f"{r['precision']} | {r['median_ms']:.2f} | {r['speedup_vs_eager']:.2f}x |" for r in rows]
    return "\n".join(lines) + "\n"


def runtime_csv(result: dict) -> str:
    """The rows as CSV, one column per ``RuntimeRow`` field."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=[f.name for f in fields(RuntimeRow)], lineterminator="\n")
    writer.writeheader()
    writer.writerows(result["rows"])
    return text.getvalue()


@torch.no_grad()
def runtime_accuracy(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                     calibration: Sequence[torch.Tensor], runtimes: Sequence[str] = EDGE_RUNTIMES,
                     precisions: Sequence[str] = ("fp32", "int8")) -> list[dict]:
    """Top-1 of a trained ``model`` on held-out ``inputs`` in PyTorch and in each runtime and
    precision (int8 calibrated on ``calibration``, batches kept apart from ``inputs``), each file
    exported and checked as ``dszoo-export`` does, with the share of predictions equal to PyTorch
    fp32's: rows of runtime, precision, top1 (%), same_as_fp32 (%), or the reason it failed."""
    model = model.eval()
    size = tuple(inputs.shape[1:])
    reference = model(inputs).argmax(1)
    rows = [{"runtime": "pytorch eager", "precision": "fp32",
             "top1": 100.0 * (reference == labels).float().mean().item(), "same_as_fp32": 100.0}]
    with tempfile.TemporaryDirectory() as folder:
        for exported in exported_files(model, size, runtimes, precisions, calibration, Path(folder)):
            row = {"runtime": exported.runtime, "precision": exported.precision}
            if exported.error:
                rows.append({**row, "error": exported.error})
                continue
            run = RUNTIMES[exported.runtime].load(exported.paths)
            predicted = torch.cat([run(part) for part in inputs.split(256)]).argmax(1)
            rows.append({**row, "top1": 100.0 * (predicted == labels).float().mean().item(),
                         "same_as_fp32": 100.0 * (predicted == reference).float().mean().item()})
    return rows


@torch.no_grad()
def runtime_support(models: Sequence[str], runtimes: Sequence[str] = EDGE_RUNTIMES,
                    precisions: Sequence[str] = ("fp32",), input_side: Optional[int] = None,
                    log: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Which (model, runtime, precision) exports pass ``export_model``'s check: for each, the
    check's text and notes, or the error that stopped it (int8 calibrated on random batches of a
    model with randomised BatchNorm statistics, where the speed and the layers are what matter).
    ``input_side`` builds image models at that side (a smaller graph, the same layers)."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in models:
            images = get_model_config(name).input_size[0] == 3
            overrides = {"input_size": input_side} if input_side and images else {}
            model = randomise_batchnorm_statistics(create_model(name, **overrides).eval())
            size = tuple(model.cfg.input_size)
            calibration = [torch.randn(4, *size) for _ in range(2)]
            # a measurement: every failure is recorded, none stops the sweep
            for exported in exported_files(model, size, runtimes, precisions, calibration, Path(folder), (Exception,)):
                check = exported.check
                rows.append({"model": name, "runtime": exported.runtime, "precision": exported.precision,
                             "ok": check is not None, "detail": str(check) if check else exported.error[:300],
                             "notes": list(check.notes) if check else []})
                log(f"{name:<32} {exported.runtime:<9} {exported.precision:<5} {'ok' if check else 'FAILED'} "
                    f"{rows[-1]['detail'][:120]}")
    return rows
