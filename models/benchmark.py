"""Benchmarks: latency and throughput of our models (eager, in both memory formats) against
timm's, the optimized path, the standard-conv counterpart, and the machine's fp32 GEMM ceiling,
all in one process.

Every figure is a median over ``repeats`` timed runs after warm-up, with the spread
(min-max) beside it. Fraction of ceiling = 2 x MACs x batch / time / GEMM FLOP/s. The roofline
time of an inference row is the sum over its conv and linear layers of max(2 x MACs / GEMM
FLOP/s, least bytes moved / memory bandwidth): the fastest any layer-at-a-time execution could
run on this machine, with both rates measured in the same run. The ``gemms`` row of each
model and batch times its ungrouped layers as bare matrix products (``LayerGemms``) in the same
round-robin: how fast this machine's BLAS runs the model's own GEMM shapes, and so the most of
the ceiling a forward pass can reach if those layers run no faster. With ``profile_top``, the
largest batch of each model is also run under ``torch.profiler`` and its top operators kept,
and then with oneDNN's verbose log on, which names the kernels inside fused partitions, to say
where the time goes.
"""
from __future__ import annotations

import copy
import ctypes
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .inference import BACKENDS, OptimizedModel, glibc_malloc_is_tuned, optimize_for_inference, tune_glibc_malloc
from .profile import count_macs, layer_gemms, layer_traffic, timed
from .registry import create_model
from .weights import TIMM_MODELS, export_to_timm

__all__ = ["BenchRow", "LayerGemms", "describe_onednn_problem", "gemm_gflops", "machine_info",
           "memory_bandwidth_gbs", "onednn_primitives", "roofline_ms", "run_benchmarks", "timed",
           "timed_interleaved", "top_operators"]


CL = torch.channels_last


@dataclass
class BenchRow:
    """One measured configuration."""

    model: str
    # ours | ours-cl | timm | optimized | optimized-BACKEND | standard | gemms | ours-train | ours-cl-train | timm-train
    variant: str
    batch: int
    median_ms: float
    min_ms: float
    max_ms: float
    images_per_s: float
    gmacs_per_s: float
    ceiling_fraction: float
    note: str = ""
    roofline_ms: Optional[float] = None  # inference rows only
    roofline_fraction: Optional[float] = None  # roofline_ms / median_ms
    # gemms rows: the most of the GEMM ceiling a whole forward pass can reach when its ungrouped
    # layers run no faster than these bare products (2 x model MACs / this row's time / ceiling)
    model_ceiling_bound: Optional[float] = None


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


def memory_bandwidth_gbs(mib: int = 256, repeats: int = 10) -> float:
    """GB/s of copying a ``mib`` MiB fp32 tensor (bytes read + bytes written, per second): far
    larger than the caches, so it is main-memory bandwidth."""
    src = torch.randn(mib * 2**18)
    dst = torch.empty_like(src)
    return 2 * src.numel() * 4 / statistics.median(timed(lambda: dst.copy_(src), repeats, warmup=2)) / 1e9


class LayerGemms:
    """A model's ungrouped conv and linear layers as bare fp32 matrix products, one per layer.

    Each (M, K, N) of ``models.profile.layer_gemms`` becomes an (M x K) input times the
    transpose of an (N x K) weight, as ``F.linear`` computes it, written into a preallocated
    output. Timed beside the model, it says how fast this machine's BLAS runs the model's own
    GEMM shapes - small ones run far below the large-square ceiling - so a forward pass that
    spends at least that long on those layers can reach no more than
    2 x MACs / (GEMM time x ceiling) of the ceiling. Products of the same shape share their
    matrices (xception's 24 middle-flow products need one set; timed, sharing made no
    difference).
    """

    def __init__(self, shapes: Sequence[tuple[int, int, int]]) -> None:
        matrices: dict[tuple[int, int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        for m, k, n in shapes:
            if (m, k, n) not in matrices:
                matrices[m, k, n] = (torch.randn(m, k), torch.randn(n, k), torch.empty(m, n))
        self.operands = [matrices[shape][:2] for shape in shapes]
        self.outputs = [matrices[shape][2] for shape in shapes]
        self.macs = sum(m * k * n for m, k, n in shapes)

    def __call__(self) -> None:
        for (a, w), out in zip(self.operands, self.outputs):
            torch.mm(a, w.t(), out=out)


def roofline_ms(layers: Sequence[tuple[int, int]], gflops: float, gbs: float) -> float:
    """Sum over (MACs, bytes) layers of max(compute time, memory time), in milliseconds."""
    return sum(max(2 * macs / gflops, nbytes / gbs) for macs, nbytes in layers) / 1e6


def top_operators(fn: Callable[[], object], runs: int = 3, top: int = 10) -> list[dict]:
    """The ``top`` operators by self CPU time over ``runs`` calls of ``fn`` (``torch.profiler``,
    grouped by operator and input shapes), per call: name, input shapes, calls, self ms and
    share of the total self time. ``fn`` is called once first, unprofiled, as a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(runs):
            fn()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operator": e.key, "input_shapes": [list(shape) for shape in e.input_shapes if shape],
             "calls": e.count / runs, "self_ms": e.self_cpu_time_total / runs / 1e3,
             "share": e.self_cpu_time_total / total}
            for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]]


_CONV_PROBLEM = re.compile(r"(?:g(?P<g>\d+))?mb\d+_ic(?P<ic>\d+)oc(?P<oc>\d+)_ih(?P<ih>\d+)oh\d+"
                           r"kh(?P<kh>\d+)sh(?P<sh>\d+)dh\d+ph\d+_iw(?P<iw>\d+)ow\d+kw(?P<kw>\d+)sw\d+dw\d+pw\d+")
_FUSED_DEPTHWISE = re.compile(r"dw:k(\d+)s(\d+)p\d+")


def describe_onednn_problem(kind: str, problem: str, post_ops: str = "") -> str:
    """A readable name for a oneDNN primitive's problem descriptor, as its verbose log gives it:
    ``mb8_ic728oc728_ih19oh19kh1sh1dh0ph0_iw19ow19kw1sw1dw0pw0`` with post-op ``dw:k3s2p1`` reads
    "1x1 conv 728 -> 728 at 19x19 + depthwise 3x3 s2". Other primitives keep the descriptor."""
    conv = _CONV_PROBLEM.fullmatch(problem) if kind == "convolution" else None
    if conv is None:
        return f"{kind} {problem}"
    c = {k: int(v) if v else 0 for k, v in conv.groupdict().items()}
    stride = f" s{c['sh']}" if c["sh"] > 1 else ""
    if c["g"] > 1 and c["g"] == c["ic"] == c["oc"]:
        text = f"depthwise {c['kh']}x{c['kw']}{stride}, {c['ic']} channels at {c['ih']}x{c['iw']}"
    else:
        groups = f" ({c['g']} groups)" if c["g"] > 1 else ""
        text = f"{c['kh']}x{c['kw']} conv{stride} {c['ic']} -> {c['oc']}{groups} at {c['ih']}x{c['iw']}"
    for k, s in _FUSED_DEPTHWISE.findall(post_ops):
        text += f" + depthwise {k}x{k}" + (f" s{s}" if s != "1" else "")
    return text


def onednn_primitives(fn: Callable[[], object], runs: int = 3, top: int = 10) -> dict:
    """Where the time of ``fn`` goes inside oneDNN: every primitive it executes over ``runs``
    calls, from oneDNN's own verbose log (``torch.backends.mkldnn.verbose``), grouped by kind,
    implementation, problem and post-ops. Unlike ``torch.profiler``, which sees a fused oneDNN
    Graph partition as one opaque ``LlgaPartition_N`` row, this names each fused convolution
    and the kernel that ran it.

    Returns, per call: ``total_ms`` (all primitives), ``wall_ms`` (the whole logged call, so that
    total_ms / wall_ms is the share of time spent inside oneDNN even where the machine's speed
    drifts between runs), ``calls``, and the ``top`` groups by time, each with ``layer``,
    ``primitive``, ``implementation``, ``problem``, ``post_ops``, ``calls``, ``ms`` and ``share``
    of ``total_ms``. ``fn`` is called once first, unlogged. oneDNN writes its log to file
    descriptor 1, which is redirected while ``fn`` runs (so whatever ``fn`` prints is not
    shown). A torch built without oneDNN gives no groups and ``calls`` 0.
    """
    fn()
    if not torch.backends.mkldnn.is_available():
        return {"total_ms": 0.0, "wall_ms": statistics.mean(timed(fn, runs, warmup=0)) * 1e3, "calls": 0, "top": []}
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                start = time.perf_counter()
                for _ in range(runs):
                    fn()
                wall = time.perf_counter() - start
        finally:
            _libc_fflush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for line in lines:  # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PROP,MEMORY,ATTRS,AUX,PROBLEM,MS
        f = line.split(",")
        i = f.index("primitive") if "primitive" in f else -1
        if i < 0 or f[i + 1:i + 2] != ["exec"] or len(f) < i + 11:
            continue
        kind, impl, attrs, problem, ms = f[i + 3], f[i + 4], f[i + 7], f[-2], float(f[-1])
        post_ops = next((a.split(":", 1)[1] for a in attrs.split() if a.startswith("attr-post-ops:")), "")
        groups.setdefault((kind, impl, problem, post_ops), []).append(ms)
    group_ms = {key: sum(times) for key, times in groups.items()}
    logged = sum(group_ms.values())
    rows = [{"layer": describe_onednn_problem(kind, problem, post_ops), "primitive": kind, "implementation": impl,
             "problem": problem, "post_ops": post_ops, "calls": len(groups[kind, impl, problem, post_ops]) / runs,
             "ms": ms / runs, "share": ms / (logged or 1.0)}
            for (kind, impl, problem, post_ops), ms in sorted(group_ms.items(), key=lambda kv: -kv[1])[:top]]
    return {"total_ms": logged / runs, "wall_ms": wall / runs * 1e3,
            "calls": sum(len(v) for v in groups.values()) / runs, "top": rows}


def _libc_fflush() -> None:
    """Flush C stdio buffers, where oneDNN's verbose log may sit before it reaches the file."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to load by that name (Windows)
        pass


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


def _optimized_note(opt: OptimizedModel) -> str:
    return f"{opt.backend}, {'channels_last' if opt.channels_last else 'contiguous'}, compile {opt.compile_seconds:.1f}s"


@torch.no_grad()
def _inference_rows(name: str, batch_sizes: Sequence[int], repeats: int, ceiling: float,
                    backends: Sequence[str], log: Callable[[str], None], tune_malloc: bool,
                    layers: dict[tuple[str, int, bool], list[tuple[int, int]]],
                    profiles: list[dict], profile_top: int, compare_backends: Sequence[str]) -> list[BenchRow]:
    """Inference rows of one model; fills ``layers[(name, batch, separable)]`` with the (MACs,
    bytes) of each conv and linear layer, for the roofline, and, where ``profile_top`` > 0,
    appends the top operators and oneDNN primitives of each variant at the largest batch to
    ``profiles``. Each of ``compare_backends`` adds a row ``optimized-BACKEND``: the optimized
    path built with that backend alone (skipped, with a log line, where it fails)."""
    model = create_model(name).eval()
    model_cl = copy.deepcopy(model).to(memory_format=CL)  # the same weights, eager, channels-last
    size = model.cfg.input_size
    macs = count_macs(model, size)
    twin = _timm_twin(model)
    rows = []
    for batch in batch_sizes:
        layers[(name, batch, True)] = list(layer_traffic(model, size, batch).values())
        x = torch.randn(batch, *size)
        opt = optimize_for_inference(model, x, backends=backends, tune_malloc=tune_malloc)
        fns: dict[str, Callable[[], object]] = {"ours": lambda: model(x),
                                                "ours-cl": lambda: model_cl(x.contiguous(memory_format=CL))}
        if twin is not None:
            fns["timm"] = lambda: twin(x)
        fns["optimized"] = lambda: opt(x)
        notes = {"optimized": _optimized_note(opt)}
        gemm_shapes = layer_gemms(model, size, batch)
        fns["gemms"] = gemms = LayerGemms(list(gemm_shapes.values()))
        notes["gemms"] = (f"its {len(gemm_shapes)} ungrouped conv and linear layers as bare matrix products, "
                          f"{gemms.macs / (macs * batch):.1%} of its MACs")
        for backend in compare_backends:
            alt = optimize_for_inference(model, x, backends=(backend,), tune_malloc=tune_malloc)
            if alt.backend != backend:
                log(f"{name:<20} optimized-{backend}: not timed, {alt.failures.get(backend, 'it fell back')}")
                continue
            fns[f"optimized-{backend}"] = lambda alt=alt: alt(x)
            notes[f"optimized-{backend}"] = _optimized_note(alt)
        times = timed_interleaved(fns, repeats)
        if profile_top and batch == max(batch_sizes):  # after timing, so profiling never slows a timed run
            profiles += [{"model": name, "batch": batch, "variant": k, "operators": top_operators(fn, top=profile_top),
                          "onednn": onednn_primitives(fn, top=profile_top)}
                         for k, fn in fns.items() if k != "gemms"]
        batch_rows = [_row(name, k, batch, v, gemms.macs // batch if k == "gemms" else macs, ceiling, notes.get(k, ""))
                      for k, v in times.items()]
        if batch == min(batch_sizes):  # the standard-conv twin is ~8x the work: latency only
            std = create_model(name, separable=False).eval()
            std_macs = count_macs(std, size)
            layers[(name, batch, False)] = list(layer_traffic(std, size, batch).values())
            batch_rows.append(_row(name, "standard", batch, timed(lambda: std(x), max(3, repeats // 2)), std_macs,
                                   ceiling, f"{std_macs / macs:.1f}x the MACs"))
        for r in batch_rows:
            log(f"{name:<20} {r.variant:<13} b{batch:<3} {r.median_ms:9.2f} ms  {r.ceiling_fraction:6.1%} {r.note}")
        rows += batch_rows
    return rows


def _training_rows(name: str, batch: int, repeats: int, ceiling: float, log: Callable[[str], None]) -> list[BenchRow]:
    model = create_model(name).train()
    size = model.cfg.input_size
    macs = count_macs(model, size)
    twin = _timm_twin(model)
    rows = []
    x, y = torch.randn(batch, *size), torch.randint(0, model.num_classes, (batch,))

    def make_step(net: nn.Module, channels_last: bool = False) -> Callable[[], None]:
        net.train()
        opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
        if channels_last:
            net.to(memory_format=CL)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(net(x.contiguous(memory_format=CL) if channels_last else x), y).backward()
            opt.step()

        return step

    # ours-cl-train is what scripts/train.py does on a CPU by default
    fns = {"ours-train": make_step(model), "ours-cl-train": make_step(copy.deepcopy(model), channels_last=True)}
    if twin is not None:
        fns["timm-train"] = make_step(twin)
    # training does ~3x the forward MACs (forward, input gradients, weight gradients)
    for variant, secs in timed_interleaved(fns, repeats, warmup=1).items():
        row = _row(name, variant, batch, secs, 3 * macs, ceiling, "3x forward MACs")
        rows.append(row)
        log(f"{name:<20} {variant:<13} b{batch:<3} {row.median_ms:9.2f} ms  {row.images_per_s:8.1f} img/s")
    return rows


def run_benchmarks(models: Sequence[str], batch_sizes: Sequence[int] = (1, 8), repeats: int = 10,
                   train_batch: int = 16, backends: Sequence[str] = BACKENDS,
                   log: Callable[[str], None] = print, tune_malloc: bool = True, profile_top: int = 0,
                   compare_backends: Sequence[str] = ()) -> dict:
    """Everything ``scripts/benchmark.py`` reports, as a JSON-ready dict.

    ``tune_malloc`` applies ``tune_glibc_malloc`` before anything is timed, so that every row -
    ours, timm's, optimized, training - runs under the same allocator settings. ``profile_top``
    > 0 adds ``profiles``: the top operators (``top_operators``) and oneDNN primitives
    (``onednn_primitives``) of every inference variant at the largest batch size.
    ``compare_backends`` adds rows ``optimized-BACKEND``, the optimized path built with that
    backend alone, timed beside the default choice.
    """
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    log(f"glibc malloc tuned (freed memory reused): {'yes' if malloc_tuned else 'no'}")
    ceiling, bandwidth = gemm_gflops(), memory_bandwidth_gbs()
    log(f"fp32 GEMM ceiling: {ceiling:.1f} GFLOP/s; memory bandwidth {bandwidth:.1f} GB/s")
    rows: list[BenchRow] = []
    layers: dict[tuple[str, int, bool], list[tuple[int, int]]] = {}
    profiles: list[dict] = []
    for name in models:
        rows += _inference_rows(name, batch_sizes, repeats, ceiling, backends, log, tune_malloc, layers, profiles,
                                profile_top, compare_backends)
    for name in models:
        rows += _training_rows(name, train_batch, max(5, repeats // 2), ceiling, log)
    # Both rates are measured again at the end and the best kept: a slow moment of the machine
    # at the start must not make every fraction look better than it is.
    end_ceiling, end_bandwidth = gemm_gflops(), memory_bandwidth_gbs()
    if end_ceiling > ceiling:
        log(f"fp32 GEMM ceiling at the end: {end_ceiling:.1f} GFLOP/s (fractions rescaled to it)")
        for r in rows:
            r.ceiling_fraction *= ceiling / end_ceiling
        ceiling = end_ceiling
    bandwidth = max(bandwidth, end_bandwidth)
    for r in rows:
        key = (r.model, r.batch, r.variant != "standard")
        if key not in layers or r.variant.endswith("-train"):
            continue
        if r.variant == "gemms":  # the whole model's MACs in the time of its bare GEMMs alone
            r.model_ceiling_bound = 2 * sum(macs for macs, _ in layers[key]) / (r.median_ms * 1e6) / ceiling
        else:
            r.roofline_ms = roofline_ms(layers[key], ceiling, bandwidth)
            r.roofline_fraction = r.roofline_ms / r.median_ms
    return {"machine": machine_info(), "gemm_gflops": ceiling, "memory_gbs": bandwidth, "repeats": repeats,
            "malloc_tuned": malloc_tuned, "rows": [asdict(r) for r in rows], "profiles": profiles}
