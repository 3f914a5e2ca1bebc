"""The machinery under ``optimize_for_inference``: glibc malloc tuning, BatchNorm folding, the
compiled backends (oneDNN Graph through a frozen TorchScript trace, inductor with freezing, a
scripted frozen graph, eager) and ``OptimizedModel``, the module they are wrapped in. Shared by
the fp32 path (``optimize``) and the low-precision ones (``quantize``)."""
from __future__ import annotations

import contextlib
import copy
import ctypes
import ctypes.util
import platform
import sys
import warnings
from typing import Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..blocks import ConvNormAct, MixedConv2d, SeparableConv2d
from ..reparameterize import reparameterize


__all__ = ["BACKENDS", "CUDA_TF32_TOLERANCE", "OptimizedModel", "build_backend", "centre_tap_convs", "compile_frozen",
           "cuda_tf32_enabled", "device_plan", "failure_reason", "fold_batchnorm", "glibc_malloc_is_tuned",
           "onednn_graph_fusion", "relative_difference", "say_fallback", "tune_glibc_malloc"]

# onednn_graph first: 1.01-1.03x (xception, batch 8) to 2.2-2.4x (small models, batch 1) faster
# than inductor on every row of the README's benchmark in two runs, and faster to compile.
BACKENDS = ("onednn_graph", "inductor", "torchscript", "eager")

# mallopt(3) parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
_malloc_tuned = False


def tune_glibc_malloc() -> bool:
    """Make glibc's malloc keep freed memory for reuse instead of returning it to the kernel.

    By default glibc serves every block above its mmap threshold (at most 32 MiB) with a fresh
    ``mmap`` and unmaps it on free, so each activation tensor of a batch costs page faults and
    the kernel zeroing its pages again on every forward pass: 51 MB of faults per batch of 8
    through the optimized mobilenet_v1 and 1.9 GB per batch of 8 through eager xception,
    measured. With mmap and heap trimming off, freed blocks are reused and those faults go to
    zero - the effect Intel's tuning guides get by preloading jemalloc or tcmalloc. The cost:
    memory freed by the process stays in it (its resident size does not shrink back).
    Process-wide and idempotent; returns False where the C library is not glibc (macOS,
    Windows, musl), where nothing is changed.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = all(libc.mallopt(param, value) == 1 for param, value in
             ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 64 * 2**20)))
    _malloc_tuned = ok
    return ok


def glibc_malloc_is_tuned() -> bool:
    """Whether ``tune_glibc_malloc`` has taken effect in this process."""
    return _malloc_tuned


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm into the conv right before it (in place; returns model).

    Reparameterisable blocks (``blocks.RepConv``) are reparameterised first (``dszoo.reparameterize``:
    the same folding, of several conv + BatchNorm branches into one conv).
    Covers ``ConvNormAct`` (conv -> norm) and ``nn.Sequential`` runs of [conv or separable conv,
    BatchNorm], as in the Xception block body and the Mobile MQA block's key and value paths. A
    BatchNorm with no conv before it (the Mobile MQA block's norm) stays: folding it into the convs
    after it would change their zero padding.
    """
    reparameterize(model, inplace=True)
    for module in list(model.modules()):
        if isinstance(module, ConvNormAct) and isinstance(module.norm, nn.BatchNorm2d):
            if isinstance(module.conv, MixedConv2d):  # each group's conv with its channels' statistics
                start = 0
                for name, conv in list(module.conv.items()):
                    module.conv[name] = fuse_conv_bn_eval(conv, _channels_of(module.norm, start, conv.out_channels))
                    start += conv.out_channels
            else:
                module.conv = fuse_conv_bn_eval(module.conv, module.norm)
            module.norm = nn.Identity()
        elif isinstance(module, nn.Sequential):
            names = list(module._modules)
            for prev, cur in zip(names, names[1:]):
                bn, before = module._modules[cur], module._modules[prev]
                if not isinstance(bn, nn.BatchNorm2d):
                    continue
                if isinstance(before, nn.Conv2d):
                    module._modules[prev] = fuse_conv_bn_eval(before, bn)
                elif isinstance(before, SeparableConv2d):  # BN follows its pointwise conv
                    before.pw.conv = fuse_conv_bn_eval(before.pw.conv, bn)
                else:
                    continue
                module._modules[cur] = nn.Identity()
    return model


def _channels_of(norm: nn.BatchNorm2d, start: int, count: int) -> nn.BatchNorm2d:
    """The eval-mode BatchNorm of ``count`` of ``norm``'s channels from ``start``."""
    part = nn.BatchNorm2d(count, eps=norm.eps).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(part, name).data.copy_(getattr(norm, name).data[start:start + count])
    return part


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / scale if scale else (a - b).abs().max().item()


class OptimizedModel(nn.Module):
    """The optimized callable, and how it was made.

    Attributes:
        backend: "onednn_graph", "inductor", "torchscript" or "eager" (the path that compiled and
            matched).
        channels_last: whether inputs are converted to channels-last.
        malloc_tuned: whether ``tune_glibc_malloc`` is in effect for this process.
        compile_seconds: time to build and first-run the compiled path.
        max_relative_difference: measured against the original model on fresh inputs (int8:
            on the first calibration batch).
        failures: backend (or precision) -> why it was not used.
        precision: "fp32", "bf16" or "int8".
        agreement: int8 only, the cosine similarity of its outputs with fp32's on calibration data.
        tf32: whether the model ran on a GPU with TF32 allowed (and so under its tolerance).
    """

    def __init__(self, runner: Callable[[torch.Tensor], torch.Tensor], backend: str, channels_last: bool,
                 compile_seconds: float, max_relative_difference: float, failures: dict[str, str],
                 malloc_tuned: bool = False, input_check: Optional[Callable[[torch.Tensor], None]] = None,
                 precision: str = "fp32") -> None:
        super().__init__()
        self.runner = runner
        self.input_check = input_check
        self.precision = precision
        self.agreement: Optional[float] = None
        self.tf32 = False
        self.backend = backend
        self.channels_last = channels_last
        self.malloc_tuned = malloc_tuned
        self.compile_seconds = compile_seconds
        self.max_relative_difference = max_relative_difference
        self.failures = failures

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's outputs for ``x``, after the model's own input checks (compiled graphs
        drop them). An input with a NaN gives NaN outputs, as the eager model does: fused
        kernels clamp NaN away (ReLU6 as min(max(x, 0), 6)), so such rows are set here."""
        if self.input_check is not None:
            self.input_check(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.runner(x)
        if isinstance(out, torch.Tensor) and x.dim() > 1 and out.shape[:1] == x.shape[:1]:
            nan_rows = torch.isnan(x).flatten(1).any(1)
            if bool(nan_rows.any()):
                out = out.masked_fill(nan_rows.view(-1, *[1] * (out.dim() - 1)), float("nan"))
        return out


@contextlib.contextmanager
def onednn_graph_fusion() -> Iterator[None]:
    """Turn on TorchScript's oneDNN Graph fuser inside the block only.

    ``torch.jit.enable_onednn_fusion`` is a process-wide switch; leaving it on would change how
    every other TorchScript model in the process runs, so the onednn_graph backend turns it on
    around its own calls and restores it after (not safe against other threads toggling it).
    """
    previous = torch.jit.onednn_fusion_enabled()
    torch.jit.enable_onednn_fusion(True)
    try:
        yield
    finally:
        torch.jit.enable_onednn_fusion(previous)


CUDA_TF32_TOLERANCE = 2e-3
"""The fp32 tolerance on a GPU that runs fp32 convolutions and matrix products in TF32 (cuDNN's
default): compiled and eager kernels round differently there (3.7e-4 measured on an H100)."""


def cuda_tf32_enabled() -> bool:
    """Whether cuDNN convolutions or cuBLAS matrix products may use TF32 in this process."""
    return bool(torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32)


def device_plan(device_type: str, batch: int, backends: Sequence[str], tolerance: float, tf32: bool,
                compile_mode: Optional[str]) -> tuple[tuple[str, ...], float, Optional[str]]:
    """Backends, tolerance and torch.compile mode for a device: on a GPU the CPU-only backends
    (oneDNN Graph, frozen TorchScript) step aside for inductor, TF32 loosens the fp32 tolerance
    to ``CUDA_TF32_TOLERANCE``, and small batches, bound by kernel launches, default to CUDA
    graphs (``mode="reduce-overhead"``)."""
    if device_type != "cuda":
        return tuple(backends), tolerance, compile_mode
    chosen = tuple(b for b in backends if b in ("inductor", "eager")) or ("inductor",)
    mode = compile_mode if compile_mode is not None else ("reduce-overhead" if batch <= 8 else None)
    return chosen, max(tolerance, CUDA_TF32_TOLERANCE) if tf32 else tolerance, mode


def compile_frozen(model: nn.Module, compile_mode: Optional[str] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` compiled by inductor with ``dynamic=False`` and weight freezing, as a callable.

    Freezing constant-folds the weights into the graph. Inductor compiles on a call (the first,
    and any with a new shape), so freezing is switched on around each call and left as it was for
    every other torch.compile in the process (torch.compile's options={"freezing": True}
    compiled unfrozen graphs in torch 2.14).
    """
    import torch._inductor.config as inductor_config

    # Every ZooNet shares one forward code object, and dynamo caches graphs per code object:
    # without room for more entries the ninth model compiled would silently run eagerly.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 256)
    torch._dynamo.config.accumulated_recompile_limit = max(torch._dynamo.config.accumulated_recompile_limit, 4096)
    compiled = torch.compile(model, backend="inductor", dynamic=False, mode=compile_mode)

    def run_frozen(x: torch.Tensor) -> torch.Tensor:
        with inductor_config.patch(freezing=True):
            return compiled(x)

    return run_frozen


def failure_reason(exc: BaseException) -> str:
    """``Type: message`` on one line, whole: for TorchScript's interpreter errors, whose text is a
    TorchScript traceback, the innermost error's line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".rstrip(": ")


def centre_tap_convs(model: nn.Module, example: torch.Tensor) -> Optional[nn.Module]:
    """A copy of ``model`` in which every conv that sees a 1x1 feature map at ``example``'s size,
    with "same" zero padding, is the 1x1 conv of its kernel's centre (the other taps only ever
    multiply padding, so the outputs are identical at that size); None when no conv is one.

    oneDNN Graph fuses a 1x1 conv with the depthwise conv after it, and on a 1x1 map that fused
    group fails ("could not create a primitive descriptor for the reorder primitive": a 1x1 map's
    strides fit both NCHW and NHWC); with the depthwise conv as its 1x1 equivalent it runs fused.
    """
    copied = copy.deepcopy(model)
    seen: dict[nn.Conv2d, tuple[int, ...]] = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.__setitem__(mod, tuple(args[0].shape[2:])))
             for m in copied.modules() if type(m) is nn.Conv2d]  # subclasses (Conv2dSame) pad by themselves
    try:
        copied(example)
    finally:
        for hook in hooks:
            hook.remove()

    def centre_only(conv: nn.Conv2d) -> bool:
        return (seen.get(conv) == (1, 1) and conv.kernel_size != (1, 1) and conv.padding_mode == "zeros"
                and isinstance(conv.padding, tuple)
                and all(k % 2 == 1 and p == d * (k - 1) // 2
                        for k, p, d in zip(conv.kernel_size, conv.padding, conv.dilation)))

    replaced = 0
    for parent in list(copied.modules()):
        for child_name, conv in list(parent.named_children()):
            if isinstance(conv, nn.Conv2d) and centre_only(conv):
                kh, kw = conv.kernel_size
                one = nn.Conv2d(conv.in_channels, conv.out_channels, 1, groups=conv.groups, bias=conv.bias is not None)
                one.weight = nn.Parameter(conv.weight[:, :, kh // 2:kh // 2 + 1, kw // 2:kw // 2 + 1].clone(),
                                          requires_grad=False)
                if conv.bias is not None:
                    one.bias = nn.Parameter(conv.bias.clone(), requires_grad=False)
                setattr(parent, child_name, one.to(memory_format=torch.channels_last)
                        if conv.weight.is_contiguous(memory_format=torch.channels_last) else one)
                replaced += 1
    return copied.eval() if replaced else None


def say_fallback(verbose: bool, backend: str, reason: str) -> None:
    if verbose:
        print(f"optimize_for_inference: backend {backend} not used: {reason}", file=sys.stderr)


def build_backend(backend: str, model: nn.Module, example: torch.Tensor,
           compile_mode: Optional[str] = None) -> Callable[[torch.Tensor], torch.Tensor]:
    if backend == "onednn_graph":
        # oneDNN Graph (LLGA) partitions the traced graph into groups of conv + bias + ReLU6
        # (+ residual add), fusing each 1x1 conv with the depthwise conv after it, and runs each
        # group with oneDNN's own kernels. The fused groups are guarded by the example's shape
        # and strides; other shapes run the unfused graph, still correctly. TorchScript's
        # deprecation notices are not the user's business. Convs that see a 1x1 map are traced
        # as their centre taps (centre_tap_convs): exact at the example's size only, so inputs of
        # another size run the BN-folded model itself.
        special = centre_tap_convs(model, example)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            frozen = torch.jit.freeze(torch.jit.trace(model if special is None else special, example))

        def run(x: torch.Tensor) -> torch.Tensor:
            if special is not None and x.shape[2:] != example.shape[2:]:
                return model(x)
            with onednn_graph_fusion():
                return frozen(x)

        profiled_runs = getattr(torch._C, "_jit_get_num_profiled_runs", lambda: 1)()
        for _ in range(profiled_runs + 1):  # TorchScript profiles the graph, then fuses it
            run(example)
        if "prim::oneDNNFusionGroup" not in str(torch.jit.last_executed_optimized_graph()):
            # plain TorchScript would be slower than the next backend: let that one run instead
            raise RuntimeError("oneDNN Graph fused nothing on this machine (it needs an x86 CPU)")
        return run
    if backend == "inductor":
        return compile_frozen(model, compile_mode)
    if backend == "torchscript":
        frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.script(model)))
        return lambda x: frozen(x)
    return lambda x: model(x)
