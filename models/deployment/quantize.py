"""int8 and bf16 inference: the precisions depthwise-separable networks ship in.

int8 is static post-training quantization through PyTorch 2's maintained path (torchao's PT2E):
``torch.export`` -> ``prepare_pt2e`` with ``X86InductorQuantizer`` (per-channel symmetric
weights, per-tensor activations) -> calibration on the user's batches -> ``convert_pt2e`` ->
inductor with weight freezing, which fuses the quantize/dequantize pairs into int8 oneDNN
kernels. No quantized kernel is written here. bf16 folds BatchNorm, casts the weights and
compiles the same way.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import time
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..quiet import libraries_quiet
from ..reparameterize import reparameterize
from .backends import (OptimizedModel, compile_frozen, device_plan, fold_batchnorm, glibc_malloc_is_tuned,
                       relative_difference, tune_glibc_malloc)

__all__ = ["CalibrationError", "HALF_DTYPES", "QuantizationAwareModel", "bf16_supported", "calibration_batches", "check_int8_device", "cosine_similarity",
           "export_for_quantization", "half_unsupported", "int8_graph", "optimize_half", "quantize", "quantizer"]

MIN_AGREEMENT = 0.95
"""Below this cosine similarity between int8 and fp32 outputs on the calibration data, the int8
model is refused (``optimize_for_inference`` falls back to fp32 with a note): never a wrong answer."""


class CalibrationError(ValueError):
    """Calibration data that cannot calibrate the model: none, or batches of the wrong shape."""


def calibration_batches(calibration: Iterable[Any], model: nn.Module, limit: Optional[int] = None) -> list[torch.Tensor]:
    """The input batches of ``calibration`` (tensors, or ``(input, target)`` pairs as loaders give),
    each checked against the model's input checks; at most ``limit`` of them."""
    if calibration is None:
        raise CalibrationError("int8 needs calibration data: a DataLoader or list of input batches (or of (input, "
                               "target) pairs) shaped like the model's input, e.g. 256 training images")
    check: Callable[[torch.Tensor], None] = getattr(model, "check_input", lambda x: None)
    batches = []
    for k, item in enumerate(itertools.islice(calibration, limit)):
        x = item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(x, torch.Tensor):
            raise CalibrationError(f"calibration batch {k}: expected a tensor or an (input, target) pair, got "
                                   f"{type(item).__name__}")
        try:
            check(x)
        except (TypeError, ValueError) as exc:
            raise CalibrationError(f"calibration batch {k}: {exc}") from None
        if len(x) == 0:
            raise CalibrationError(f"calibration batch {k} is empty; each batch needs at least one input")
        if batches and x.shape[1:] != batches[0].shape[1:]:
            raise CalibrationError(f"calibration batch {k}: inputs of shape {tuple(x.shape[1:])}, batch 0's are "
                                   f"{tuple(batches[0].shape[1:])}; calibrate at the one size the model will run at")
        batches.append(x)
    if not batches:
        raise CalibrationError("calibration holds no batches; give a DataLoader or list of input batches shaped "
                               "like the model's input")
    return batches


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two batches of outputs: each example's outputs (flattened) against the
    other's, averaged over the examples (1.0 for an example where both are zero). Per example, so
    that one input far outside the calibration range, whose logits are ten times the others' and
    which int8 saturates, weighs as one example, not as most of the batch (MobileOne-S0 on digits:
    0.86 over the flattened batch, 0.99 per image, with 99% of its predictions kept)."""
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    norms = a.norm(dim=1) * b.norm(dim=1)
    dots = (a * b).sum(dim=1)
    same = (a == b).all(dim=1).double()
    return float(torch.where(norms > 0, dots / norms.clamp_min(1e-300), same).mean())


def _pt2e() -> Any:
    """torchao's PT2E functions and x86 quantizer module, or an ImportError saying how to get them."""
    try:
        with libraries_quiet():  # torchao 0.18 registers an Enum the old way, which torch logs
            from torchao.quantization import pt2e
            from torchao.quantization.pt2e import quantize_pt2e
            from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as x86
    except ImportError:
        raise ImportError("int8 quantization needs torchao: pip install 'dszoo[int8]'") from None
    steps = {"prepare": quantize_pt2e.prepare_pt2e, "prepare_qat": quantize_pt2e.prepare_qat_pt2e,
             "convert": quantize_pt2e.convert_pt2e, "to_eval": pt2e.move_exported_model_to_eval,
             "to_train": pt2e.move_exported_model_to_train}
    return SimpleNamespace(**{name: _with_quick_rewrites(step) for name, step in steps.items()}, x86=x86)


def export_for_quantization(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """``model`` captured by ``torch.export`` as the graph PT2E quantizes: with a dynamic batch
    dimension, so that batches may differ in size, unless ``example`` is one example (torch.export
    cannot keep a dimension of size 1 dynamic; such a graph runs one example at a time)."""
    dynamic = None if len(example) == 1 else ({0: torch.export.Dim("batch", min=1, max=4096)},)
    graph = torch.export.export(model, (example,), dynamic_shapes=dynamic).module()
    return _module_classes_resolved(graph, model)


def _module_classes_resolved(graph: torch.fx.GraphModule, model: nn.Module) -> torch.fx.GraphModule:
    """``graph`` with each node's module stack naming module classes, not their names as text.

    The quantizer finds convolutions by the class of the module they ran in, and compares a
    class name as text for equality but a class by ``issubclass``: given the name, it passes
    over subclasses of ``nn.Conv2d`` such as ``blocks.layers.Conv2dSame`` (the DS-CNN's first
    layer), which would stay in fp32."""
    for node in graph.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        for key, (path, cls) in list((stack or {}).items()):
            if isinstance(cls, str):
                try:
                    stack[key] = (path, type(model.get_submodule(path)))
                except AttributeError:  # a path export made up: leave it as it is
                    pass
    return graph


def quantizer(*, is_qat: bool = False) -> Any:
    """``X86InductorQuantizer`` with its default config: per-channel symmetric int8 weights,
    per-tensor activations (fake-quantized for quantization-aware training with ``is_qat``)."""
    x86 = _pt2e().x86
    return x86.X86InductorQuantizer().set_global(x86.get_default_x86_inductor_quantization_config(is_qat=is_qat))


@torch.no_grad()
def int8_graph(model: nn.Module, batches: list[torch.Tensor]) -> torch.fx.GraphModule:
    """The PyTorch int8 model of ``model`` in eval mode (reparameterised): exported, prepared with ``quantizer()``,
    calibrated on ``batches`` (checked ones: ``calibration_batches``) and converted. Its ops are
    quantize/dequantize pairs around fp32 ones: the reference that ``quantize`` compiles into
    int8 kernels and ``export_model`` writes as ONNX QDQ or ``.pt2``."""
    pt2e = _pt2e()
    if len(batches[0]) == 1:  # a graph for one example calibrates one example at a time
        batches = [x[i:i + 1] for x in batches for i in range(len(x))]
    # a copy, reparameterised: each multi-branch block quantized as the one conv it deploys as
    exported = export_for_quantization(reparameterize(model).eval(), batches[0])
    prepared = pt2e.prepare(exported, quantizer())
    for x in batches:
        prepared(x)
    return _converted(prepared)


def _converted(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """``convert_pt2e`` of a prepared graph, in eval mode, less the parameters and buffers no node
    reads: the fp32 weights stay attached beside their int8 copies, and would be saved with every
    exported file."""
    pt2e = _pt2e()
    graph = pt2e.to_eval(pt2e.convert(prepared))
    graph.training = False  # to_eval switched the ops; the flag says so (ONNX export reads it)
    used = {n.target for n in graph.graph.nodes if n.op == "get_attr"}
    for name, _ in [*graph.named_parameters(), *graph.named_buffers()]:
        if name not in used:
            path, _, attr = name.rpartition(".")
            delattr(graph.get_submodule(path) if path else graph, attr)
    graph.delete_all_unused_submodules()
    return graph


def _conv_targets() -> dict[Callable, frozenset]:
    """The aten ops of each kind of convolution torchao's conv-BatchNorm rewrites look for."""
    aten, F = torch.ops.aten, torch.nn.functional
    return {F.conv1d: frozenset({aten.conv1d.default, aten.conv1d.padding}),
            F.conv2d: frozenset({aten.conv2d.default, aten.conv2d.padding}),
            F.conv_transpose1d: frozenset({aten.conv_transpose1d, aten.conv_transpose1d.default}),
            F.conv_transpose2d: frozenset({aten.conv_transpose2d, aten.conv_transpose2d.input})}


def _only_for_present_convs(helper: Callable) -> Callable:
    """torchao's conv-BatchNorm rewrite ``helper`` (graph, conv function, ...), passed over for a
    kind of convolution the graph does not contain: it would match nothing and change nothing."""
    targets = _conv_targets()

    def rewrite(m: torch.fx.GraphModule, conv_fn: Callable, *args: Any, **kwargs: Any) -> torch.fx.GraphModule:
        kind = targets.get(conv_fn)
        if kind is not None and not any(n.op == "call_function" and n.target in kind for n in m.graph.nodes):
            return m
        return helper(m, conv_fn, *args, **kwargs)
    return rewrite


def _pattern_key(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict) -> Optional[tuple]:
    """What a torchao pattern graph is exported from: the pattern function's code and closure
    (the options it was made with) and its inputs' shapes and dtypes; None where that cannot be
    told (the pattern is then exported as torchao does)."""
    fn = getattr(pattern, "fn", pattern)  # torchao wraps some patterns in a WrapperModule
    code = getattr(fn, "__code__", None)
    if code is None:
        return None

    def spec(value: Any) -> Any:
        return (tuple(value.shape), value.dtype) if isinstance(value, torch.Tensor) else value
    try:
        options = tuple(c.cell_contents for c in fn.__closure__ or ())
    except ValueError:  # an empty cell
        return None
    if not all(callable(v) or isinstance(v, (bool, int, float, str, type(None))) for v in options):
        return None  # a tensor or other object the pattern closes over: no key (and no copy kept)
    key = (code, options, is_cuda, tuple(spec(x) for x in example_inputs),
           tuple(sorted((k, spec(v)) for k, v in kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


_PATTERN_GRAPHS: dict[tuple, torch.fx.GraphModule] = {}


def _traced_pattern_graph(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool = False,
                          **kwargs: Any) -> torch.fx.GraphModule:
    """What torchao's ``_get_aten_graph_module_for_pattern`` (torchao 0.18) gives for a
    conv-BatchNorm pattern, traced by ``torch.export`` without TorchDynamo (``strict=False``): the
    same aten graph, to its generated code, in 40% of the time. Such a pattern is a function of
    tensors and of the options it closes over, which Python runs as it is. (Not for every pattern:
    traced so, an in-place dropout comes out as the out-of-place op.)"""
    if is_cuda:
        example_inputs = tuple(x.cuda() if isinstance(x, torch.Tensor) else x for x in example_inputs)
    graph = torch.export.export(pattern, example_inputs, kwargs, strict=False).module()
    graph.graph.eliminate_dead_code()
    for node in list(graph.graph.nodes):  # the copy_ nodes module() adds for mutated inputs
        if node.op == "call_function" and node.target == torch.ops.aten.copy_.default and not node.users:
            graph.graph.erase_node(node)
    if torch.__version__.startswith("2.9"):  # as torchao: 2.9's guard node fails in patterns
        for node in list(graph.graph.nodes):
            if node.op == "call_module" and node.name == "_guards_fn":
                graph.graph.erase_node(node)
                if hasattr(graph, "_guards_fn"):
                    delattr(graph, "_guards_fn")
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def _exported_once(export_pattern: Callable, *, without_dynamo: bool = False) -> Callable:
    """torchao's ``_get_aten_graph_module_for_pattern`` (``export_pattern``), each pattern exported
    once a process: later calls get a copy of the graph the first one made. ``without_dynamo``:
    made by ``_traced_pattern_graph`` (by ``export_pattern`` where that fails)."""
    def make(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool, kwargs: dict) -> torch.fx.GraphModule:
        if without_dynamo:
            try:
                return _traced_pattern_graph(pattern, example_inputs, is_cuda, **kwargs)
            except Exception:  # noqa: BLE001 - torchao's own strict export is the reference
                pass
        return export_pattern(pattern, example_inputs, is_cuda, **kwargs)

    def exported(pattern: Callable, example_inputs: tuple[Any, ...], is_cuda: bool = False,
                 **kwargs: Any) -> torch.fx.GraphModule:
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is None:
            return make(pattern, example_inputs, is_cuda, kwargs)
        if key not in _PATTERN_GRAPHS:
            _PATTERN_GRAPHS[key] = make(pattern, example_inputs, is_cuda, kwargs)
        return copy.deepcopy(_PATTERN_GRAPHS[key])
    return exported


@contextlib.contextmanager
def _quick_pattern_rewrites() -> Iterator[None]:
    """Within: torchao's QAT conv-BatchNorm fusion (``prepare_qat_pt2e``) and folding
    (``convert_pt2e``) rewrite only the kinds of convolution the graph has, and every pattern
    graph torchao rewrites with (those, and the BatchNorm and dropout patterns of each switch
    between training and evaluation) is exported once a process.

    torchao runs the conv-BatchNorm rewrites for conv1d, conv2d, conv_transpose1d and
    conv_transpose2d alike, exporting its pattern graphs every time (24 per kind when folding): of
    a 21 s conversion of ``ds_cnn_s`` here, 15 s went to the three kinds these networks never
    contain, and of the rest, 5 s to exporting the same 24 conv2d patterns again at each
    conversion; each switch to evaluation exports 6 more (a quarter of a post-training
    quantization of ``mobilenet_v1_025``); and torchao exports each with TorchDynamo, which the
    conv-BatchNorm patterns do without (``_traced_pattern_graph``). No maintained setting skips
    them. Where a torchao lacks these private helpers, its own code runs unchanged."""
    from torchao.quantization.pt2e import qat_utils, utils
    wrappers = {(qat_utils, "_fuse_conv_bn_qat_helper"): _only_for_present_convs,
                (qat_utils, "_fold_conv_bn_qat_helper"): _only_for_present_convs,
                # qat_utils' own binding of the name: the conv-BatchNorm patterns
                (qat_utils, "_get_aten_graph_module_for_pattern"):
                    functools.partial(_exported_once, without_dynamo=True),
                (utils, "_get_aten_graph_module_for_pattern"): _exported_once}  # imported from here when used
    originals = {(module, name): getattr(module, name) for module, name in wrappers if hasattr(module, name)}
    try:
        for (module, name), helper in originals.items():
            setattr(module, name, wrappers[module, name](helper))
        yield
    finally:
        for (module, name), helper in originals.items():
            setattr(module, name, helper)


def _with_quick_rewrites(step: Callable) -> Callable:
    """torchao's PT2E ``step`` (prepare, convert, a switch of mode) run within ``_quick_pattern_rewrites``."""
    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        with _quick_pattern_rewrites():
            return step(*args, **kwargs)
    return run


class QuantizationAwareModel(nn.Module):
    """``model`` with fake quantization for quantization-aware training (torchao's
    ``prepare_qat_pt2e`` on the exported training graph), sharing its parameters and BatchNorm
    buffers: training it trains ``model``. Switching it between training and evaluation mode
    switches the graph's BatchNorm and dropout (an exported graph cannot by itself); ``convert()``
    gives the int8 graph."""

    def __init__(self, model: nn.Module, example: torch.Tensor) -> None:
        super().__init__()
        pt2e = _pt2e()
        mode = model.training
        graph = export_for_quantization(model.train(), example)
        model.train(mode)
        self.graph = pt2e.prepare_qat(graph, quantizer(is_qat=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    def train(self, mode: bool = True) -> "QuantizationAwareModel":
        pt2e = _pt2e()
        (pt2e.to_train if mode else pt2e.to_eval)(self.graph)
        self.training = mode
        return self

    @torch.no_grad()
    def convert(self) -> torch.fx.GraphModule:
        """The int8 graph of the weights as they are now (as ``int8_graph`` gives after calibration),
        with the activation ranges the fake quantizers observed; this model stays trainable."""
        return _converted(_pt2e().to_eval(copy.deepcopy(self.graph)))


@torch.no_grad()
def quantize(model: nn.Module, calibration: Iterable[Any], *, method: str = "ptq",
             max_batches: Optional[int] = None, compile: bool = True, tune_malloc: bool = True,
             example_input: Optional[torch.Tensor] = None) -> OptimizedModel:
    """Static int8 post-training quantization of ``model`` (see the module docstring).

    Args:
        calibration: input batches, or ``(input, target)`` pairs (a DataLoader), of the shape
            the model will run at; activation ranges are observed on them.
        method: "ptq" (quantization-aware training is ``dszoo-train --qat``'s job).
        max_batches: calibrate on at most this many batches.
        compile: compile with inductor (the fast int8 kernels); without it the converted graph
            runs as PyTorch ops that quantize and dequantize: the same numbers, slowly, at once.

    Returns an ``OptimizedModel`` with ``precision == "int8"``, compiled for the first batch's
    shape, whose ``agreement`` is the cosine similarity of its outputs with the fp32 model's on
    inputs held out of calibration (``split_for_checking``; ``example_input`` among them).
    Raises ``CalibrationError`` for missing, empty or misshapen data, and ``RuntimeError`` when
    the int8 outputs do not agree with fp32 there (``int8_disagreement``).
    """
    if method != "ptq":
        raise ValueError(f"unknown quantization method {method!r}; allowed: ptq")
    check_int8_device(model, example_input)
    _pt2e()
    original = model.eval()
    batches = calibration_batches(calibration, original, max_batches)
    calibrate, held_out = split_for_checking(batches, example_input)
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    t0 = time.perf_counter()
    converted = int8_graph(original, calibrate)
    return _checked_int8(converted, original, calibrate[0], compile, time.perf_counter() - t0, malloc_tuned, held_out)


def check_int8_device(model: nn.Module, example_input: Optional[torch.Tensor] = None) -> None:
    """``ValueError`` saying what to do where ``model`` or ``example_input`` is not on the CPU:
    the int8 path is torchao's x86 inductor kernels."""
    on = {p.device.type for p in model.parameters()} | ({example_input.device.type} if example_input is not None else set())
    if on - {"cpu"}:
        raise ValueError(f"int8 runs on the CPU (torchao's x86 inductor kernels); the model or input is on "
                         f"{', '.join(sorted(on - {'cpu'}))}: call model.cpu() and pass CPU inputs, or use "
                         "precision='bf16' or 'fp16' on a GPU")


def split_for_checking(batches: list[torch.Tensor],
                       example_input: Optional[torch.Tensor] = None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(batches to calibrate on, inputs to check int8 against fp32 on): never the same inputs, so a
    calibration that fits only itself (zeros, another task's data) cannot pass its own check. The
    last of several batches is held out, else the second half of a single batch; the example
    input, when given, is checked too."""
    if len(batches) > 1:
        calibrate, held_out = batches[:-1], [batches[-1]]
    elif len(batches[0]) > 1:
        half = len(batches[0]) // 2
        calibrate, held_out = [batches[0][:half]], [batches[0][half:]]
    else:
        calibrate, held_out = batches, []
    if example_input is not None:
        held_out.append(example_input)
    return calibrate, held_out or batches


MIN_TOP1_AGREEMENT = 0.9
"""int8 must give fp32's top class on at least this share of the held-out inputs (classifiers)."""


NEAR_TIE_ERROR = 0.03
"""int8 may change fp32's top class on a row whose largest int8 error is at most this share of
fp32's logit range (then fp32's two classes were within twice that of each other: a near-tie;
calibrated int8 errs by 0.4-1.3% on the registry's untrained networks); a row with a larger
error that changes it disagrees."""


def top1_agreement(out: torch.Tensor, expected: torch.Tensor) -> torch.Tensor:
    """Share of rows where ``out`` keeps ``expected``'s top class or changes it only as a near-tie
    (``NEAR_TIE_ERROR``): an untrained network's logits are near-ties that no rounding keeps."""
    kept = out.argmax(1) == expected.argmax(1)
    error = (out - expected).abs().amax(1)
    small = error <= NEAR_TIE_ERROR * (expected.amax(1) - expected.amin(1))
    return (kept | small).double().mean()


def int8_disagreement(converted: nn.Module, original: nn.Module, inputs: Sequence[torch.Tensor]) -> Optional[str]:
    """Why int8 does not reproduce fp32 on some batch of ``inputs`` (cosine similarity below
    ``MIN_AGREEMENT``, or top-1 agreement below ``MIN_TOP1_AGREEMENT``), or None. Each batch is
    judged alone, so held-out inputs like the calibration ones cannot hide others."""
    for x in inputs:
        with torch.no_grad():
            out, expected = converted(x), original(x)
        cosine = cosine_similarity(out, expected)
        if not cosine >= MIN_AGREEMENT:
            return f"int8 outputs agree with fp32 only to cosine similarity {cosine:.3f} on inputs held out of " \
                   f"calibration (at least {MIN_AGREEMENT} needed): calibrate on data like the model's task"
        if out.dim() == 2 and out.shape[1] > 1:
            same = float(top1_agreement(out, expected))
            if same < MIN_TOP1_AGREEMENT:
                return f"int8 gives fp32's top class on only {same:.1%} of the inputs held out of calibration (at " \
                       f"least {MIN_TOP1_AGREEMENT:.0%} needed): calibrate on data like the model's task"
    return None


def _checked_int8(converted: torch.fx.GraphModule, original: nn.Module, first: torch.Tensor, compile: bool,
                  seconds: float, malloc_tuned: bool, held_out: Sequence[torch.Tensor] = ()) -> OptimizedModel:
    """The converted int8 graph, compiled with inductor (``compile``), as an ``OptimizedModel``
    whose agreement with ``original`` is measured on ``held_out`` inputs (``first`` without them)."""
    problem = int8_disagreement(converted, original, list(held_out) or [first])
    if problem is not None:
        raise RuntimeError(problem)
    t0 = time.perf_counter()
    run = compile_frozen(converted) if compile else converted
    out = run(first)
    seconds += time.perf_counter() - t0
    expected = original(first)
    with torch.no_grad():
        agreement = cosine_similarity(torch.cat([converted(x) for x in held_out or [first]]),
                                      torch.cat([original(x) for x in held_out or [first]]))
    result = OptimizedModel(run, "inductor" if compile else "eager", False, seconds, relative_difference(out, expected),
                            {}, malloc_tuned, getattr(original, "check_input", None), precision="int8")
    result.agreement = agreement
    return result


def bf16_supported() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX), as oneDNN reports it."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(check()) if check is not None else False


HALF_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
"""The 16-bit precisions ``optimize_half`` compiles, and their dtypes."""


def half_unsupported(precision: str, device: torch.device) -> Optional[str]:
    """Why ``precision`` ("bf16" or "fp16") cannot run on ``device``, or None where it can:
    bf16 needs a GPU that has it or a CPU with AVX-512 BF16 or AMX; fp16 is for GPUs (CPUs have
    no fast fp16 convolutions)."""
    if device.type == "cuda":
        return None if precision == "fp16" or torch.cuda.is_bf16_supported() else "this GPU has no bfloat16"
    if precision == "fp16":
        return "fp16 runs on a GPU; on a CPU use 'bf16' (where it has it) or 'int8'"
    return None if bf16_supported() else "this CPU has no native bfloat16 (AVX-512 BF16 or AMX)"


@torch.no_grad()
def optimize_half(model: nn.Module, example_input: torch.Tensor, precision: str = "bf16", *,
                  tune_malloc: bool = True) -> OptimizedModel:
    """``model`` with BatchNorm folded, weights in bfloat16 or float16 (``precision``), channels-
    last, compiled by inductor with freezing; fp32 inputs in, fp32 outputs out. On a GPU small
    batches run as CUDA graphs, as in fp32. ``max_relative_difference`` against fp32 is measured
    on fresh inputs and reported, not held to fp32's 1e-4 (bf16 keeps 8 bits of mantissa, fp16
    11). Raises ``RuntimeError`` where the device cannot run ``precision`` (``half_unsupported``)."""
    why = half_unsupported(precision, example_input.device)
    if why:
        raise RuntimeError(f"{why}; use precision='fp32'" + (" or 'int8'" if not example_input.is_cuda else ""))
    dtype = HALF_DTYPES[precision]
    malloc_tuned = tune_glibc_malloc() if tune_malloc else glibc_malloc_is_tuned()
    original = model.eval()
    folded = fold_batchnorm(copy.deepcopy(original)).to(dtype).to(memory_format=torch.channels_last)
    _, _, mode = device_plan(example_input.device.type, len(example_input), ("inductor",), 0.0, False, None)
    compiled = compile_frozen(folded, mode)

    def run(x: torch.Tensor) -> torch.Tensor:
        return compiled(x.to(dtype).contiguous(memory_format=torch.channels_last)).float()

    t0 = time.perf_counter()
    run(example_input)
    seconds = time.perf_counter() - t0
    checks = [torch.randn_like(example_input) for _ in range(2)]
    diff = max(relative_difference(run(x), original(x)) for x in checks)
    return OptimizedModel(run, "inductor", True, seconds, diff, {}, malloc_tuned, getattr(original, "check_input", None),
                          precision=precision)
