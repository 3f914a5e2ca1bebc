"""The benchmark on a GPU (``dszoo-benchmark --device cuda``): ours against timm's twin with the
same weights, eager and compiled, in fp32 (TF32 where the backends allow it), in bf16 (float16
on GPUs without it) with channels-last, and our ``optimize_for_inference`` in fp32 and bf16;
inference at each batch size and the training step as ``dszoo-train --amp`` runs it.

GPU work is asynchronous, so each call is timed with CUDA events recorded around it (a host
clock would time the launch); calls run in shuffled rounds so drift affects every variant alike. The
device's matrix-product rate (fp32 and bf16, large squares) and its device-to-device copy
bandwidth are measured in the same run, and each inference row gets a roofline time: the sum
over its conv and linear layers of max(2 x MACs / product rate, bytes / bandwidth), bf16 layers
moving half the fp32 bytes (``dszoo.profile.layer_traffic``). The same code runs on a CPU with
a host clock, which is how its plumbing is tested without a GPU.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from ..deployment.optimize import optimize_for_inference
from ..profile import layer_traffic
from ..registry import create_model
from ..training.runtime import amp_dtype
from .benchmark import _timm_twin, host_timer, roofline_ms, timed_interleaved

__all__ = ["DeviceRow", "copy_bandwidth_gbs", "device_timer", "matmul_gflops", "run_device_benchmarks"]

CL = torch.channels_last
Timer = Callable[[Callable[[], object]], float]


@dataclass
class DeviceRow:
    """One measured configuration on the device."""

    model: str
    # ours | timm | ours-bf16-cl | timm-bf16-cl | timm-bf16-cl-compiled | optimized | optimized-bf16 | *-train
    # (fp16 for bf16 on GPUs without bfloat16)
    variant: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    roofline_ms: Optional[float] = None  # inference rows only
    roofline_fraction: Optional[float] = None  # roofline_ms / median_ms
    note: str = ""


def device_timer(device: torch.device) -> Timer:
    """Seconds one call takes on ``device``: between CUDA events recorded before and after it on
    a GPU (waiting for the second), by the host clock on a CPU."""
    if device.type != "cuda":
        return host_timer

    def on_gpu(fn: Callable[[], object]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in milliseconds

    return on_gpu


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int = 10) -> float:
    """GFLOP/s of an n x n matrix product in ``dtype`` on ``device`` (median)."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    secs = timed_interleaved({"mm": lambda: torch.mm(a, b)}, repeats, 3, device_timer(device))["mm"]
    return 2 * n**3 / statistics.median(secs) / 1e9


def copy_bandwidth_gbs(device: torch.device, mib: int, repeats: int = 10) -> float:
    """GB/s of copying ``mib`` MiB within ``device`` (bytes read + bytes written, median)."""
    src = torch.randn(mib * 2**18, device=device)
    dst = torch.empty_like(src)
    secs = timed_interleaved({"copy": lambda: dst.copy_(src)}, repeats, 3, device_timer(device))["copy"]
    return 2 * src.numel() * 4 / statistics.median(secs) / 1e9


def _row(model: str, variant: str, batch: int, secs: list[float], note: str = "") -> DeviceRow:
    med = statistics.median(secs)
    return DeviceRow(model, variant, batch, med * 1e3, min(secs) * 1e3, max(secs) * 1e3, batch / med, note=note)


@torch.no_grad()
def _inference_fns(model: nn.Module, twin: Optional[nn.Module], x: torch.Tensor, low: torch.dtype, compile: bool,
                   log: Callable[[str], None]) -> tuple[dict[str, Callable[[], object]], dict[str, str]]:
    """The inference variants of one model at one batch, as callables, and notes on them."""
    tag = "bf16" if low == torch.bfloat16 else "fp16"
    x_cl = x.contiguous(memory_format=CL)
    ours_cl = copy.deepcopy(model).to(memory_format=CL)

    def under_cast(net: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], object]:
        def call() -> object:
            with torch.autocast(x.device.type, dtype=low):
                return net(x_cl)
        return call

    fns: dict[str, Callable[[], object]] = {"ours": lambda: model(x), f"ours-{tag}-cl": under_cast(ours_cl)}
    notes: dict[str, str] = {}
    if twin is not None:
        twin_cl = copy.deepcopy(twin).to(memory_format=CL)
        fns["timm"] = lambda: twin(x)
        fns[f"timm-{tag}-cl"] = under_cast(twin_cl)
        if compile:  # timm's best configuration
            fns[f"timm-{tag}-cl-compiled"] = under_cast(torch.compile(twin_cl, dynamic=False))
    if compile:
        fast = optimize_for_inference(model, x)
        fns["optimized"] = lambda: fast(x)
        notes["optimized"] = f"{fast.backend}, compile {fast.compile_seconds:.1f}s" + (", TF32" if fast.tf32 else "")
        try:
            fast_low = optimize_for_inference(model, x, precision=tag)
            fns[f"optimized-{tag}"] = lambda: fast_low(x)
            notes[f"optimized-{tag}"] = (f"{fast_low.backend}, compile {fast_low.compile_seconds:.1f}s, max relative "
                                         f"difference from fp32 {fast_low.max_relative_difference:.1e}")
        except RuntimeError as exc:
            log(f"optimized-{tag}: not timed, {exc}")
    return fns, notes


def _training_fns(model: nn.Module, twin: Optional[nn.Module], batch: int, size: Sequence[int], low: torch.dtype,
                  compile: bool) -> dict[str, Callable[[], object]]:
    """A training step (SGD) of ours and of timm's twin, both channels-last under autocast to
    ``low`` with a GradScaler where it is float16: ``dszoo-train --amp``'s defaults."""
    device = next(model.parameters()).device
    x = torch.randn(batch, *size, device=device).contiguous(memory_format=CL)
    y = torch.randint(0, model.num_classes, (batch,), device=device)

    def make_step(net: nn.Module) -> Callable[[], object]:
        net = copy.deepcopy(net).train().to(memory_format=CL)
        run = torch.compile(net, dynamic=False) if compile else net
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        scaler = torch.amp.GradScaler(device.type, enabled=low == torch.float16)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=low):
                loss = nn.functional.cross_entropy(run(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        return step

    fns = {"ours-train": make_step(model)}
    if twin is not None:
        fns["timm-train"] = make_step(twin)
    return fns


def run_device_benchmarks(models: Sequence[str], device: torch.device, batch_sizes: Sequence[int] = (1, 64, 256),
                          train_batch: int = 64, repeats: int = 20, compile: bool = True,
                          log: Callable[[str], None] = print, matmul_size: int = 8192, copy_mib: int = 1024,
                          input_size: Optional[int] = None) -> dict:
    """Everything ``dszoo-benchmark --device cuda`` reports, as a JSON-ready dict (see the module
    docstring). ``compile`` adds the compiled variants (timm's and our optimized paths);
    ``input_size`` overrides the models' own (small inputs test the plumbing on a CPU)."""
    low = amp_dtype(device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())
    ceilings = {"fp32": matmul_gflops(device, torch.float32, matmul_size),
                "bf16": matmul_gflops(device, low, matmul_size)}
    bandwidth = copy_bandwidth_gbs(device, copy_mib)
    log(f"{device}: fp32 products {ceilings['fp32']:.0f} GFLOP/s, {low} products {ceilings['bf16']:.0f} GFLOP/s, "
        f"copies {bandwidth:.0f} GB/s")
    timer = device_timer(device)
    rows: list[DeviceRow] = []
    for name in models:
        overrides = {"input_size": input_size} if input_size else {}
        model = create_model(name, **overrides).to(device).eval()
        size = tuple(model.cfg.input_size)
        twin = _timm_twin(model)
        twin = twin.to(device) if twin is not None else None
        for batch in batch_sizes:
            x = torch.randn(batch, *size, device=device)
            fns, notes = _inference_fns(model, twin, x, low, compile, log)
            with torch.no_grad():
                layers = list(layer_traffic(model, size, batch).values())  # a forward pass on the device
                times = timed_interleaved(fns, repeats, 3, timer)
            for variant, secs in times.items():
                row = _row(name, variant, batch, secs, notes.get(variant, ""))
                half = "bf16" in variant or "fp16" in variant  # 16-bit activations and weights
                moved = [(macs, nbytes * (0.5 if half else 1.0)) for macs, nbytes in layers]
                row.roofline_ms = roofline_ms(moved, ceilings["bf16" if half else "fp32"], bandwidth)
                row.roofline_fraction = row.roofline_ms / row.median_ms
                log(f"{name:<16} {variant:<24} b{batch:<4} {row.median_ms:9.3f} ms {row.images_per_s:10.1f} img/s")
                rows.append(row)
        # eager, as dszoo-train --amp runs it (compiling it is --compile's, and costs minutes a model)
        for variant, secs in timed_interleaved(_training_fns(model, twin, train_batch, size, low, compile=False),
                                               max(3, repeats // 2), 2, timer).items():
            rows.append(_row(name, variant, train_batch, secs, f"SGD step, autocast {low}, channels-last"))
            log(f"{name:<16} {variant:<24} b{train_batch:<4} {rows[-1].median_ms:9.3f} ms")
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {"device": device_name, "torch": torch.__version__, "low_precision": str(low).replace("torch.", ""),
            "ceilings_gflops": ceilings, "copy_gbs": bandwidth, "repeats": repeats, "rows": [asdict(r) for r in rows]}
