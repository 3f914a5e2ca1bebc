"""Benchmarks: latency and throughput of our models (eager, in both memory formats) against
timm's, the optimized path, the standard-conv counterpart, and the machine's fp32 GEMM ceiling,
all in one process.

Every figure is a median over ``repeats`` timed runs after warm-up, with the spread
(min-max) beside it. Fraction of ceiling = 2 x MACs x batch / time / GEMM FLOP/s. The roofline
time of an inference row is the sum over its conv and linear layers of max(2 x MACs / GEMM
FLOP/s, least bytes moved / memory bandwidth): the fastest any layer-at-a-time execution could
run on this machine, with both rates measured in the same run. The ``gemms`` row of each
model and batch times its ungrouped layers as bare matrix products (``LayerGemms``) in the same
shuffled rounds: how fast this machine's BLAS runs the model's own GEMM shapes, and so the most of
the ceiling a forward pass can reach if those layers run no faster. With ``profile_top``, the
largest batch of each model is also run under ``torch.profiler`` and its top operators kept,
and then with oneDNN's verbose log on, which names the kernels inside fused partitions, to say
where the time goes.

With ``precisions`` the optimized path is also timed in int8 (``dszoo.quantize``, calibrated on
random batches: speed only; accuracy is measured on real data elsewhere) and bf16 (where the CPU
has it), in the same rounds. Their fractions and rooflines use their own ceilings, measured
the same way as the fp32 one: the int8 ceiling is a large square linear layer through the same
int8 path (the oneDNN kernel int8 models run on; ``torch._int_mm`` takes a slow generic path
here), the bf16 ceiling a large square bf16 product; an int8 layer moves a quarter of the fp32
bytes, a bf16 layer half.
"""
from __future__ import annotations

import copy
import platform
import random
import statistics
import time
from dataclasses import asdict, dataclass, replace
from typing import Callable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..deployment.export import randomise_batchnorm_statistics
from ..deployment.optimize import BACKENDS, OptimizedModel, glibc_malloc_is_tuned, optimize_for_inference, tune_glibc_malloc
from ..profile import count_macs, layer_gemms, layer_traffic, timed
from ..plan import plan_model
from ..registry import create_model, get_model_config
from ..reparameterize import is_reparameterizable, reparameterize
from ..weights import TIMM_MODELS, export_to_timm, export_to_torchvision
from .profiler import onednn_primitives, top_operators

__all__ = ["BenchRow", "LOW_PRECISIONS", "LayerGemms", "bf16_gemm_gflops", "gemm_gflops", "host_timer",
           "int8_gemm_gops", "machine_info", "memory_bandwidth_gbs", "precision_of", "roofline_ms", "run_benchmarks", "timed_interleaved"]

LOW_PRECISIONS = ("int8", "bf16")
"""The precisions besides fp32 the benchmark can time (rows named after them)."""

BYTES_SCALE = {"fp32": 1.0, "bf16": 0.5, "int8": 0.25}
"""Bytes a layer moves in each precision, as a share of its fp32 bytes."""


CL = torch.channels_last


@dataclass
class BenchRow:
    """One measured configuration."""

    model: str
    # ours | ours-cl | timm | torchvision | ours-reparameterized | timm-reparameterized | optimized | optimized-BACKEND | int8 | bf16 | standard | gemms | ours-train
    # | ours-cl-train | timm-train
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


def host_timer(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes by the host clock."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def settle(fn: Callable[[], object], warmup: int, timer: Callable[[Callable[[], object]], float] = host_timer,
           most: int = 20, seconds: float = 0.5) -> None:
    """Untimed calls of ``fn``: ``warmup`` of them, then more (up to ``most`` in all) while the
    last call is over twice the fastest one or they have taken under ``seconds`` together, so
    that a first-call cost lasting several calls (a profiling executor re-optimising, caches of
    kernels and pages filling) stays out of the timed calls."""
    seen: list[float] = []
    while len(seen) < warmup or (len(seen) < most and (seen[-1] > 2 * min(seen) or sum(seen) < seconds)):
        seen.append(timer(fn))


def timed_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                      timer: Callable[[Callable[[], object]], float] = host_timer) -> dict[str, list[float]]:
    """Like ``timed`` for several callables, run in rounds so that drift in the machine's speed
    (other load, frequency) affects them alike and their ratios stay fair; ``timer`` times one
    call (on a GPU: ``device_benchmark.device_timer``). Each round takes them in a new order
    (seeded, so a run is repeatable): in a fixed order each callable would always run after the
    same neighbour and inherit what that one left in the caches (after the bare GEMMs' large
    matrices, nothing of its own), which moved the eager ratio of a small network by several percent."""
    for fn in fns.values():
        settle(fn, warmup, timer)
    out: dict[str, list[float]] = {k: [] for k in fns}
    order, shuffle = list(fns), random.Random(0).shuffle
    for _ in range(repeats):
        shuffle(order)
        for key in order:
            out[key].append(timer(fns[key]))
    return out


def gemm_gflops(sizes: Sequence[int] = (2048, 4096), repeats: int = 10) -> float:
    """fp32 GFLOP/s of large square matrix products (the best median over ``sizes``): the
    practical ceiling that convolutions, which lower to GEMM-like kernels, can approach."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        best = max(best, 2 * n**3 / statistics.median(timed(lambda: torch.mm(a, b), repeats, warmup=3)) / 1e9)
    return best


def int8_gemm_gops(sizes: Sequence[int] = (2048, 4096), repeats: int = 10) -> float:
    """int8 GOP/s of large square products through the int8 path the models take: an n x n
    linear layer quantized by ``dszoo.quantize`` (oneDNN's u8 x s8 kernel, fp32 in and out), at
    a batch of n (the best median over ``sizes``)."""
    from ..deployment.quantize import quantize

    best = 0.0
    for n in sizes:
        x = torch.randn(n, n)
        layer = quantize(nn.Linear(n, n, bias=False).eval(), [x], tune_malloc=False)
        best = max(best, 2 * n**3 / statistics.median(timed(lambda: layer(x), repeats, warmup=3)) / 1e9)
    return best


def bf16_gemm_gflops(sizes: Sequence[int] = (2048, 4096), repeats: int = 10) -> float:
    """bf16 GFLOP/s of large square matrix products (the best median over ``sizes``)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=torch.bfloat16), torch.randn(n, n, dtype=torch.bfloat16)
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

    Each (M, K, N) of ``dszoo.profile.layer_gemms`` becomes an (M x K) input times the
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
    """timm's counterpart (the config's ``timm_name``) loaded with our weights, where there is one."""
    if not model.cfg.timm_name or model.cfg.family not in TIMM_MODELS:
        return None
    import timm

    twin = timm.create_model(model.cfg.timm_name, num_classes=model.num_classes)
    ours, theirs = export_to_timm(model), twin.state_dict()
    if ours.keys() != theirs.keys() or any(ours[k].shape != theirs[k].shape for k in ours):
        return None
    twin.load_state_dict(ours, strict=True)
    return twin.eval()


TRAINING_FORM_VARIANTS = ("ours", "ours-cl", "timm", "torchvision")
"""Rows that run the network as built; the others (optimized, int8, reparameterised) run its
deployed form, whose MACs their rates are taken against (fewer for a reparameterised network)."""


def _torchvision_twin(model: nn.Module) -> Optional[nn.Module]:
    """torchvision's counterpart (the config's ``torchvision_name``) loaded with our weights, where
    there is one."""
    if not model.cfg.torchvision_name:
        return None
    import torchvision

    twin = getattr(torchvision.models, model.cfg.torchvision_name)(num_classes=model.num_classes)
    twin.load_state_dict(export_to_torchvision(model), strict=True)
    return twin.eval()


def _reparameterized_twins(model: nn.Module, twin: Optional[nn.Module]) -> dict[str, nn.Module]:
    """For a model with multi-branch blocks: its inference form, and timm's twin's by timm's own
    ``reparameterize_model``."""
    if not is_reparameterizable(model):
        return {}
    out = {"ours-reparameterized": reparameterize(model).eval()}
    if twin is not None:
        from timm.utils.model import reparameterize_model

        out["timm-reparameterized"] = reparameterize_model(twin).eval()  # a copy
    return out


def _optimized_note(opt: OptimizedModel) -> str:
    return f"{opt.backend}, {'channels_last' if opt.channels_last else 'contiguous'}, compile {opt.compile_seconds:.1f}s"


def precision_of(variant: str) -> str:
    """The number format a row's variant computes in."""
    return variant if variant in LOW_PRECISIONS else "fp32"


def _low_precision(model: nn.Module, x: torch.Tensor, precision: str, tune_malloc: bool) -> tuple[Optional[OptimizedModel], str]:
    """The optimized path in ``precision`` (int8 calibrated on random batches), or None and why not."""
    try:
        calibration = [torch.randn_like(x) for _ in range(4)] if precision == "int8" else None
        opt = optimize_for_inference(model, x, precision=precision, calibration=calibration, tune_malloc=tune_malloc)
    except (RuntimeError, ImportError) as exc:
        return None, " ".join(str(exc).split())[:200]
    if opt.precision != precision:
        return None, opt.failures.get(precision, "it fell back to fp32")
    return opt, ""


@torch.no_grad()
def _inference_rows(name: str, batch_sizes: Sequence[int], repeats: int, ceilings: dict[str, float],
                    backends: Sequence[str], log: Callable[[str], None], tune_malloc: bool,
                    layers: dict[tuple[str, int, bool], list[tuple[int, int]]],
                    profiles: list[dict], profile_top: int, compare_backends: Sequence[str],
                    precisions: Sequence[str] = ()) -> list[BenchRow]:
    """Inference rows of one model; fills ``layers[(name, batch, separable)]`` with the (MACs,
    bytes) of each conv and linear layer, for the roofline, and, where ``profile_top`` > 0,
    appends the top operators and oneDNN primitives of each variant at the largest batch to
    ``profiles``. Each of ``compare_backends`` adds a row ``optimized-BACKEND``: the optimized
    path built with that backend alone (skipped, with a log line, where it fails); each of
    ``precisions`` (int8, bf16) a row named after it (skipped, with a log line, where it cannot
    be made here). Every row times the model with randomised BatchNorm statistics
    (``randomise_batchnorm_statistics``; BatchNorm is folded away, so the speed is the same): a
    fresh model's BatchNorms compute the identity, its outputs are then near zero, too little for
    int8 to agree with, and a network of summed branches (GhostNetV3's five a conv) grows its
    activations so far that no folded form reproduces them."""
    model = randomise_batchnorm_statistics(create_model(name))
    model_cl = copy.deepcopy(model).to(memory_format=CL)  # the same weights, eager, channels-last
    size = model.cfg.input_size
    macs = count_macs(model, size)
    twin = _timm_twin(model)
    others = {"torchvision": _torchvision_twin(model), **_reparameterized_twins(model, twin)}
    # what the optimized and reparameterised rows compute: one conv per multi-branch block
    deployed_macs = count_macs(others["ours-reparameterized"], size) if "ours-reparameterized" in others else macs
    rows = []
    for batch in batch_sizes:
        layers[(name, batch, True)] = list(layer_traffic(model, size, batch).values())
        x = torch.randn(batch, *size)
        opt = optimize_for_inference(model, x, backends=backends, tune_malloc=tune_malloc)
        for backend, why in opt.failures.items():
            log(f"{name:<20} optimized, batch {batch}: {backend} not used ({why}); {opt.backend} instead")
        fns: dict[str, Callable[[], object]] = {"ours": lambda: model(x),
                                                "ours-cl": lambda: model_cl(x.contiguous(memory_format=CL))}
        if twin is not None:
            fns["timm"] = lambda: twin(x)
        fns.update({variant: (lambda net=net: net(x)) for variant, net in others.items() if net is not None})
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
        for precision in precisions:
            low, why = _low_precision(model, x, precision, tune_malloc)
            if low is None:
                log(f"{name:<20} {precision}: not timed, {why}")
                continue
            fns[precision] = lambda low=low: low(x)
            notes[precision] = f"{low.backend}, compile {low.compile_seconds:.1f}s, max relative difference from fp32 " \
                               f"{low.max_relative_difference:.1e}"
        times = timed_interleaved(fns, repeats)
        if profile_top and batch == max(batch_sizes):  # after timing, so profiling never slows a timed run
            profiles += [{"model": name, "batch": batch, "variant": k, "operators": top_operators(fn, top=profile_top),
                          "onednn": onednn_primitives(fn, top=profile_top)}
                         for k, fn in fns.items() if k != "gemms"]
        batch_rows = [_row(name, k, batch, v, gemms.macs // batch if k == "gemms" else
                           macs if k in TRAINING_FORM_VARIANTS else deployed_macs,
                           ceilings[precision_of(k)], notes.get(k, "")) for k, v in times.items()]
        if batch == min(batch_sizes):  # the standard-conv twin is ~8x the work: latency only
            std = create_model(name, separable=False).eval()
            std_macs = count_macs(std, size)
            layers[(name, batch, False)] = list(layer_traffic(std, size, batch).values())
            batch_rows.append(_row(name, "standard", batch, timed(lambda: std(x), max(3, repeats // 2)), std_macs,
                                   ceilings["fp32"], f"{std_macs / macs:.1f}x the MACs"))
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


def _low_precision_ceilings(precisions: Sequence[str], sizes: Sequence[int], log: Callable[[str], None]) -> dict[str, float]:
    """The int8 and bf16 GEMM ceilings ``precisions`` ask for, measured; a precision this machine
    cannot run is left out with a log line."""
    from ..deployment.quantize import bf16_supported

    unknown = [p for p in precisions if p not in LOW_PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precisions {unknown}; allowed: {', '.join(LOW_PRECISIONS)}")
    ceilings = {}
    if "int8" in precisions:
        try:
            ceilings["int8"] = int8_gemm_gops(sizes)
            log(f"int8 GEMM ceiling: {ceilings['int8']:.1f} GOP/s")
        except ImportError as exc:
            log(f"int8: not timed, {exc}")
    if "bf16" in precisions:
        if bf16_supported():
            ceilings["bf16"] = bf16_gemm_gflops(sizes)
            log(f"bf16 GEMM ceiling: {ceilings['bf16']:.1f} GFLOP/s")
        else:
            log("bf16: not timed, this CPU has no native bfloat16 (AVX-512 BF16 or AMX)")
    return ceilings


def run_benchmarks(models: Sequence[str], batch_sizes: Sequence[int] = (1, 8), repeats: int = 10,
                   train_batch: int = 16, backends: Sequence[str] = BACKENDS,
                   log: Callable[[str], None] = print, tune_malloc: bool = True, profile_top: int = 0,
                   compare_backends: Sequence[str] = (), ceiling_sizes: Sequence[int] = (2048, 4096),
                   precisions: Sequence[str] = (), on_progress: Callable[[dict], None] = lambda result: None) -> dict:
    """Everything ``scripts/benchmark.py`` reports, as a JSON-ready dict; ``on_progress`` gets the
    result so far after each model's rows (the command writes its files from it).

    ``tune_malloc`` applies ``tune_glibc_malloc`` before anything is timed, so that every row -
    ours, timm's, optimized, training - runs under the same allocator settings. ``profile_top``
    > 0 adds ``profiles``: the top operators (``top_operators``) and oneDNN primitives
    (``onednn_primitives``) of every inference variant at the largest batch size.
    ``compare_backends`` adds rows ``optimized-BACKEND``, the optimized path built with that
    backend alone, timed beside the default choice. ``ceiling_sizes`` are the square matrix
    products the GEMM ceiling is measured on (smaller ones for a quick run: a 4096-square product
    takes seconds on two cores). ``precisions`` (of ``LOW_PRECISIONS``) adds a row per precision
    beside the fp32 ones, with its own ceiling (``ceilings`` in the result).
    """
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    log(f"glibc malloc tuned (freed memory reused): {'yes' if malloc_tuned else 'no'}")
    ceiling, bandwidth = gemm_gflops(ceiling_sizes), memory_bandwidth_gbs()
    log(f"fp32 GEMM ceiling: {ceiling:.1f} GFLOP/s; memory bandwidth {bandwidth:.1f} GB/s")
    ceilings = {"fp32": ceiling, **_low_precision_ceilings(precisions, ceiling_sizes, log)}
    precisions = [p for p in precisions if p in ceilings]
    guess = estimate_seconds(models, batch_sizes, repeats, ceiling, precisions, compare_backends)
    log(f"estimated run time: about {f'{guess:.0f} s' if guess < 120 else f'{guess / 60:.0f} min'} (a rough figure from "
        "the models' MACs at this ceiling and typical compile times)")
    rows: list[BenchRow] = []
    layers: dict[tuple[str, int, bool], list[tuple[int, int]]] = {}
    profiles: list[dict] = []

    def result() -> dict:
        return {"machine": machine_info(), "repeats": repeats, "malloc_tuned": malloc_tuned, "profiles": profiles,
                **_assemble(rows, layers, ceilings, bandwidth, log)}

    for name in models:
        rows += _inference_rows(name, batch_sizes, repeats, ceilings, backends, log, tune_malloc, layers, profiles,
                                profile_top, compare_backends, precisions)
        on_progress(result())
    for name in models:
        rows += _training_rows(name, train_batch, max(5, repeats // 2), ceiling, log)
        on_progress(result())
    # Both rates are measured again at the end and the best kept: a slow moment of the machine
    # at the start must not make every fraction look better than it is.
    end_ceiling, end_bandwidth = gemm_gflops(ceiling_sizes), memory_bandwidth_gbs()
    if end_ceiling > ceilings["fp32"]:
        log(f"fp32 GEMM ceiling at the end: {end_ceiling:.1f} GFLOP/s (fractions rescaled to it)")
        ceilings["fp32"] = end_ceiling
    bandwidth = max(bandwidth, end_bandwidth)
    return result()


def _assemble(rows: Sequence[BenchRow], layers: Mapping[tuple[str, int, bool], list[tuple[int, int]]],
              ceilings: dict[str, float], bandwidth: float, log: Callable[[str], None]) -> dict:
    """The rows (copies) against their ceilings, rooflines and GEMM bounds. A ceiling must bound
    what it is compared with: where a row of a precision ran faster than the ceiling measured for
    it (a small product's ceiling against a model's larger ones), that row's rate becomes the
    ceiling, and ``ceilings`` keeps it."""
    out = [replace(r) for r in rows]
    for r in out:  # fractions were taken against the ceiling measured first
        r.ceiling_fraction = 2 * r.gmacs_per_s / ceilings[precision_of(r.variant)]
    for precision in ceilings:
        fastest = max((r for r in out if precision_of(r.variant) == precision), key=lambda r: r.ceiling_fraction,
                      default=None)
        if fastest is not None and fastest.ceiling_fraction > 1:
            log(f"{precision} ceiling raised to {2 * fastest.gmacs_per_s:.1f} G/s, the rate of {fastest.model} "
                f"{fastest.variant} b{fastest.batch} (above the {ceilings[precision]:.1f} measured)")
            ceilings[precision] = 2 * fastest.gmacs_per_s
            for r in out:
                if precision_of(r.variant) == precision:
                    r.ceiling_fraction = 2 * r.gmacs_per_s / ceilings[precision]
    for r in out:
        key = (r.model, r.batch, r.variant != "standard")
        if key not in layers or r.variant.endswith("-train"):
            continue
        if r.variant == "gemms":  # the whole model's MACs in the time of its bare GEMMs alone
            r.model_ceiling_bound = 2 * sum(macs for macs, _ in layers[key]) / (r.median_ms * 1e6) / ceilings["fp32"]
        else:
            precision = precision_of(r.variant)
            moved = [(macs, nbytes * BYTES_SCALE[precision]) for macs, nbytes in layers[key]]
            r.roofline_ms = roofline_ms(moved, ceilings[precision], bandwidth)
            r.roofline_fraction = r.roofline_ms / r.median_ms
    return {"gemm_gflops": ceilings["fp32"], "ceilings": dict(ceilings), "memory_gbs": bandwidth,
            "rows": [asdict(r) for r in out]}


COMPILE_SECONDS = {"fp32": 3.0, "int8": 10.0, "bf16": 5.0}
"""Typical seconds ``optimize_for_inference`` takes per model and batch (2-core x86 VM), for the estimate."""


def estimate_seconds(models: Sequence[str], batch_sizes: Sequence[int], repeats: int, ceiling: float,
                     precisions: Sequence[str] = (), compare_backends: Sequence[str] = ()) -> float:
    """A rough run time: every timed and warm-up call at a quarter of the GEMM ceiling (eager
    convs reach about that), the standard-conv and training rows, and typical compile times."""
    total = 0.0
    for name in models:
        cfg = get_model_config(name)
        macs = plan_model(cfg).macs
        for batch in batch_sizes:
            forward = 2 * macs * batch / (0.25 * ceiling * 1e9)
            variants = 5 + len(precisions) + len(compare_backends)  # ours, ours-cl, timm, optimized, gemms
            total += forward * variants * (repeats + 2) + COMPILE_SECONDS["fp32"] * (1 + len(compare_backends))
            total += sum(COMPILE_SECONDS[p] for p in precisions)
        total += 8 * 2 * macs * min(batch_sizes) / (0.25 * ceiling * 1e9) * max(3, repeats // 2)  # standard convs
        total += 3 * 3 * 2 * macs * 16 / (0.25 * ceiling * 1e9) * (max(5, repeats // 2) + 1)  # training steps
    return total
