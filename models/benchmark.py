"""Benchmarks: latency and throughput of our models against timm's, the optimized path,
the standard-conv counterpart, and the machine's fp32 GEMM ceiling, all in one process.

Every figure is a median over ``repeats`` timed runs after warm-up, with the spread
(min-max) beside it. Fraction of ceiling = 2 x MACs x batch / time / GEMM FLOP/s.
"""
from __future__ import annotations

import platform
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .inference import optimize_for_inference
from .profile import count_macs, timed
from .registry import create_model
from .weights import TIMM_MODELS, export_to_timm

__all__ = ["BenchRow", "gemm_gflops", "machine_info", "run_benchmarks", "timed", "timed_interleaved"]


@dataclass
class BenchRow:
    """One measured configuration."""

    model: str
    variant: str  # ours | timm | optimized | standard | ours-train | timm-train
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    gmacs_per_s: float
    ceiling_fraction: float
    note: str = ""


def timed_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, list[float]]:
    """Like ``timed`` for several callables, run round-robin so that drift in the machine's
    speed (other load, frequency) affects them alike and their ratios stay fair."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[key].append(time.perf_counter() - t0)
    return out


def gemm_gflops(sizes: Sequence[int] = (2048, 4096), repeats: int = 10) -> float:
    """fp32 GFLOP/s of large square matrix products (the best median over ``sizes``): the
    practical ceiling that convolutions, which lower to GEMM-like kernels, can approach."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, 2 * n**3 / statistics.median(timed(lambda: torch.mm(a, b), repeats, warmup=3)) / 1e9)
    return best


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "threads": str(torch.get_num_threads()), "torch": torch.__version__, "python": platform.python_version()}


def _row(model: str, variant: str, batch: int, secs: list[float], macs: int, ceiling: float, note: str = "") -> BenchRow:
    med = statistics.median(secs)
    gmacs = macs * batch / med / 1e9
    return BenchRow(model, variant, batch, med * 1e3, min(secs) * 1e3, max(secs) * 1e3, batch / med,
                    gmacs, 2 * gmacs / ceiling, note)


def _timm_twin(model: nn.Module) -> Optional[nn.Module]:
    """timm's counterpart loaded with our weights, where its architecture fits ours exactly
    (mobilenet_v1 and xception; not the width or depth variants)."""
    if model.cfg.family not in TIMM_MODELS:
        return None
    import timm

    twin = timm.create_model(TIMM_MODELS[model.cfg.family][0], num_classes=model.num_classes)
    ours, theirs = export_to_timm(model), twin.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        return None
    twin.load_state_dict(ours, strict=True)
    return twin.eval()


@torch.no_grad()
def _inference_rows(name: str, batch_sizes: Sequence[int], repeats: int, ceiling: float,
                    backends: Sequence[str], log: Callable[[str], None]) -> list[BenchRow]:
    model = create_model(name).eval()
    size = model.cfg.input_size
    macs = count_macs(model, size)
    twin = _timm_twin(model)
    rows = []
    for batch in batch_sizes:
        x = torch.randn(batch, *size)
        opt = optimize_for_inference(model, x, backends=backends)
        fns: dict[str, Callable[[], object]] = {"ours": lambda: model(x)}
        if twin is not None:
            fns["timm"] = lambda: twin(x)
        fns["optimized"] = lambda: opt(x)
        times = timed_interleaved(fns, repeats)
        note = f"{opt.backend}, {'channels_last' if opt.channels_last else 'contiguous'}, compile {opt.compile_seconds:.1f}s"
        batch_rows = [_row(name, k, batch, v, macs, ceiling, note if k == "optimized" else "") for k, v in times.items()]
        if batch == min(batch_sizes):  # the standard-conv twin is ~8x the work: latency only
            std = create_model(name, separable=False).eval()
            std_macs = count_macs(std, size)
            batch_rows.append(_row(name, "standard", batch, timed(lambda: std(x), max(3, repeats // 2)), std_macs,
                                   ceiling, f"{std_macs / macs:.1f}x the MACs"))
        for r in batch_rows:
            log(f"{name:<20} {r.variant:<10} b{batch:<3} {r.median_ms:9.2f} ms  {r.ceiling_fraction:6.1%} {r.note}")
        rows += batch_rows
    return rows


def _training_rows(name: str, batch: int, repeats: int, ceiling: float, log: Callable[[str], None]) -> list[BenchRow]:
    model = create_model(name).train()
    size = model.cfg.input_size
    macs = count_macs(model, size)
    twin = _timm_twin(model)
    rows = []
    x, y = torch.randn(batch, *size), torch.randint(0, model.num_classes, (batch,))

    def make_step(net: nn.Module) -> Callable[[], None]:
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x), y).backward()
            opt.step()

        return step

    fns = {"ours-train": make_step(model)}
    if twin is not None:
        fns["timm-train"] = make_step(twin)
    # training does ~3x the forward MACs (forward, input gradients, weight gradients)
    for variant, secs in timed_interleaved(fns, repeats, warmup=1).items():
        row = _row(name, variant, batch, secs, 3 * macs, ceiling, "3x forward MACs")
        rows.append(row)
        log(f"{name:<20} {variant:<10} b{batch:<3} {row.median_ms:9.2f} ms  {row.images_per_s:8.1f} img/s")
    return rows


def run_benchmarks(models: Sequence[str], batch_sizes: Sequence[int] = (1, 8), repeats: int = 10,
                   train_batch: int = 16, backends: Sequence[str] = ("inductor", "torchscript", "eager"),
                   log: Callable[[str], None] = print) -> dict:
    """Everything ``scripts/benchmark.py`` reports, as a JSON-ready dict."""
    ceiling = gemm_gflops()
    log(f"fp32 GEMM ceiling: {ceiling:.1f} GFLOP/s")
    rows: list[BenchRow] = []
    for name in models:
        rows += _inference_rows(name, batch_sizes, repeats, ceiling, backends, log)
    for name in models:
        rows += _training_rows(name, train_batch, max(5, repeats // 2), ceiling, log)
    # The ceiling is measured again at the end and the best kept: a slow moment of the machine
    # at the start must not make every fraction look better than it is.
    end_ceiling = gemm_gflops()
    if end_ceiling > ceiling:
        log(f"fp32 GEMM ceiling at the end: {end_ceiling:.1f} GFLOP/s (fractions rescaled to it)")
        for r in rows:
            r.ceiling_fraction *= ceiling / end_ceiling
        ceiling = end_ceiling
    return {"machine": machine_info(), "gemm_gflops": ceiling, "repeats": repeats,
            "rows": [asdict(r) for r in rows]}
