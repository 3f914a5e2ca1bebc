"""Export to every runtime of ``dszoo.deployment.runtimes`` (TorchScript, ``.pt2``, ONNX Runtime,
ExecuTorch, OpenVINO), each file verified in its own runtime before it appears.

Every file is loaded back into its runtime and run on a fresh random batch of another batch size
(the batch dimension is dynamic in every format). An fp32 file is compared with eager by relative
difference, so a broken export never passes silently; a freshly built model is also checked
through a copy with randomised BatchNorm statistics (``ExportCheck``). An int8 file
(``precision="int8"`` with calibration batches, quantized by each runtime's own quantizer) is
judged by what its runtime computes: at least some of its conv/linear layers in int8 (those left in
floating point are named), and agreement with fp32 on inputs held out of calibration (cosine
similarity and top class, the bars ``optimize_for_inference`` holds int8 to).

Every file carries what its input must be (``export_metadata``: image size, resize and
normalisation, or the MFCC front end) and its class names; ``read_export_metadata`` reads them back.
"""
from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..blocks.reparam import RepConv
from ..files import atomic_path
from ..preprocessing import input_spec
from ..reparameterize import reparameterize
from .optimize import PRECISIONS, fold_batchnorm, relative_difference
from .runtimes import METADATA_NAME, RUNTIMES, ExportError, Runtime, runtime_for_path

__all__ = ["EXPORT_FORMATS", "EXPORT_SUFFIXES", "EXPORT_PRECISIONS", "ExportCheck", "ExportError", "METADATA_NAME",
           "export_metadata", "export_model", "has_initial_batchnorm_statistics", "randomise_batchnorm_statistics",
           "read_export_metadata"]

PathLike = Union[str, Path]


def export_metadata(model: nn.Module, input_size: tuple[int, ...], precision: str) -> str:
    """JSON naming the network, its input (``dszoo.preprocessing.input_spec``: how raw images or
    audio become it), its class names where the model knows them, and the precision."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    about = {"model": cfg.get("architecture"), "input": input_spec({**cfg, "input_size": tuple(input_size)}),
             "class_names": cfg.get("class_names"), "precision": precision}
    return json.dumps(about, allow_nan=False)


def read_export_metadata(path: PathLike) -> dict[str, Any]:
    """The ``export_metadata`` an exported file carries (``{}`` for a file written without it)."""
    return runtime_for_path(path).read_metadata(str(path))


EXPORT_FORMATS: dict[str, Runtime] = RUNTIMES
"""Every export format, by ``--format`` name: the runtime that writes, loads and runs its files."""

EXPORT_SUFFIXES: dict[str, tuple[str, ...]] = {fmt: runtime.suffixes for fmt, runtime in RUNTIMES.items()}
"""File name endings each format's file may have (``dszoo-export`` checks ``--out``)."""

EXPORT_PRECISIONS: dict[str, tuple[str, ...]] = {
    precision: tuple(fmt for fmt, runtime in RUNTIMES.items() if precision in runtime.precisions)
    for precision in ("fp32", "int8")}
"""The formats each precision exports to (TorchScript cannot hold quantized ops)."""


@dataclass(frozen=True)
class ExportCheck:
    """How an export was verified. fp32: max |file - model| / max |model| on a fresh batch of
    another size, for the model itself and, where its BatchNorm statistics are still at their
    initial values (BatchNorm then computes the identity, so an export that mishandles it would
    pass), for a copy of it with randomised statistics exported the same way. int8: the file's
    agreement with the fp32 model on ``held_out`` inputs kept out of calibration (cosine
    similarity of the outputs, share of inputs given fp32's top class), and ``notes`` on layers
    its runtime computes in floating point or outside its fast path (``float_layers`` of its
    ``layers`` conv/linear layers)."""

    relative_difference: float
    randomised_relative_difference: Optional[float] = None
    reference: str = "the model"
    cosine: Optional[float] = None
    top1_agreement: Optional[float] = None
    held_out: int = 0
    notes: tuple[str, ...] = ()
    layers: int = 0
    float_layers: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.cosine is not None:
            text = (f"on {self.held_out} inputs held out of calibration: cosine similarity to fp32 {self.cosine:.4f}, "
                    f"max relative difference {self.relative_difference:.2e}")
            if self.top1_agreement is not None:
                text += f", fp32's top class on {self.top1_agreement:.1%}"
            return text + f"; {self.layers - len(self.float_layers)} of its {self.layers} conv/linear layers in int8"
        text = f"max relative difference vs {self.reference} on a fresh batch {self.relative_difference:.2e}"
        if self.randomised_relative_difference is not None:
            text += (f"; {self.randomised_relative_difference:.2e} on a copy with randomised BatchNorm statistics "
                     "(the model's own are at their initial values)")
        return text


def has_initial_batchnorm_statistics(model: nn.Module) -> bool:
    """Whether the model has BatchNorm layers and all of them still hold their initial running
    statistics (mean 0, variance 1): a freshly built model, whose BatchNorm is the identity."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    return bool(norms) and all(bool((m.running_mean == 0).all() and (m.running_var == 1).all()) for m in norms)


@torch.no_grad()
def randomise_batchnorm_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine weights and running statistics, in place, from a
    generator seeded with ``seed``; returns the model in eval mode. They stay within 10% of the
    identity (scales 1 +- 0.1, shifts and means of 0.1, variances 0.75-1.25): far enough that a
    wrong fold shows at once, near enough that a deep stack of summed branches (MobileOne-S4: 43
    reparameterisable convs) keeps its float32 rounding near 1e-7 instead of compounding it to 1e-4.
    A norm that its block initialises to zero scale (RepViT's residual MLPs) gets scales of 0.1 +-
    0.01: random unit-scale branches summed over 14 blocks grow activations to thousands, which no
    trained network has. Summed parallel branches (a ``RepConv``'s k x k, 1x1 and identity
    branches) grow them too: each branch's norm gets its scales divided by the square root of the
    number of branches, so that their sum keeps one branch's spread (GhostNetV3's five-branch
    convs would otherwise reach activations of 1e8)."""
    gen = torch.Generator().manual_seed(seed)
    branch_scale: dict[int, float] = {}
    for m in model.modules():
        if isinstance(m, RepConv) and not m.reparameterized:
            branches = [*m.conv_kxk, *([m.conv_scale] if m.has_scale else []), *([m.identity] if m.has_identity else [])]
            branch_scale |= {id(n): len(branches) ** -0.5 for b in branches for n in b.modules()}
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            if m.affine:
                scale = (0.1 if bool((m.weight == 0).all()) else 1.0) * branch_scale.get(id(m), 1.0)
                m.weight.copy_(scale * (1.0 + 0.1 * torch.randn(n, generator=gen)))
                m.bias.copy_(0.1 * torch.randn(n, generator=gen))
            if m.track_running_stats:
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.75 + 0.5 * torch.rand(n, generator=gen))
    return model.eval()


def _fp32_checked(model: nn.Module, runtime: Runtime, paths: list[str], input_size: tuple[int, ...], fold_bn: bool,
                  metadata: str = "{}") -> float:
    """Write ``model`` in fp32 to ``paths``, load it back in its runtime and return its relative
    difference from the eager model on a fresh batch of 3 (the export was traced at a batch of 2)."""
    # reparameterised either way: a file holds the deployed form (fold_batchnorm reparameterises first)
    exported = fold_batchnorm(copy.deepcopy(model)) if fold_bn else reparameterize(model)
    runtime.write(exported, torch.randn(2, *input_size), paths, metadata)
    fresh = torch.randn(3, *input_size)
    return relative_difference(runtime.load(paths)(fresh), model(fresh))


def _int8_checked(model: nn.Module, runtime: Runtime, paths: list[str], input_size: tuple[int, ...],
                  batches: list[torch.Tensor], metadata: str) -> ExportCheck:
    """Write ``model`` in int8 to ``paths`` (BatchNorm folded first, calibrated on all but the
    held-out part of ``batches``), load it back in its runtime and check it against fp32 on the
    held-out inputs (``quantize.int8_disagreement``)."""
    from .quantize import cosine_similarity, int8_disagreement, split_for_checking, top1_agreement

    calibrate, held_out = split_for_checking(batches)
    written = runtime.write(fold_batchnorm(copy.deepcopy(model)), torch.randn(2, *input_size), paths, metadata,
                            calibrate)
    if written.layers and len(written.float_layers) == written.layers:
        shown = ", ".join(written.float_layers[:3]) + (", ..." if written.layers > 3 else "")
        raise ExportError(f"the int8 {runtime.format} file computes every one of its {written.layers} conv/linear "
                          f"layers in floating point ({shown}): it lost its quantization")
    run = runtime.load(paths)
    problem = int8_disagreement(run, model, held_out)
    if problem is not None:
        raise ExportError(f"int8 {runtime.format}: {problem}")
    out, expected = torch.cat([run(x) for x in held_out]), torch.cat([model(x) for x in held_out])
    notes = list(written.notes)
    if written.float_layers:
        notes.insert(0, f"{runtime.runtime} computes {len(written.float_layers)} of the file's {written.layers} "
                        f"conv/linear layers in floating point: {', '.join(written.float_layers[:4])}"
                        f"{', ...' if len(written.float_layers) > 4 else ''}")
    classes = out.dim() == 2 and out.shape[1] > 1
    return ExportCheck(relative_difference(out, expected), reference="the fp32 model",
                       cosine=cosine_similarity(out, expected),
                       top1_agreement=float(top1_agreement(out, expected)) if classes else None,
                       held_out=len(out), notes=tuple(notes), layers=written.layers,
                       float_layers=tuple(written.float_layers))


@torch.no_grad()
def export_model(model: nn.Module, fmt: str, out: PathLike, input_size: tuple[int, ...], rtol: float = 1e-4,
                 fold_bn: bool = True, *, precision: str = "fp32", calibration: Any = None,
                 overwrite: bool = True) -> ExportCheck:
    """Write ``model`` (eval mode) as ``fmt`` (a runtime of ``RUNTIMES``) to ``out`` and verify
    it in that runtime (``ExportCheck``); raise ``ExportError`` where fp32 differs from eager by
    more than ``rtol`` (relative, max), or int8 disagrees with fp32 on held-out inputs. With
    ``fold_bn`` the exported fp32 graph has every BatchNorm folded into its conv
    (``optimize_for_inference``'s first step; int8 always folds). ``precision="int8"`` needs
    ``calibration``: input batches, or ``(input, target)`` pairs, of at least two examples each
    (the last of several batches, or half of one, is held out to check the file).
    The file (and any companion, e.g. OpenVINO's ``.bin``) appears only once verified; with
    ``overwrite=False`` only if nothing appeared there meanwhile (else ``FileExistsError``).
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; allowed: {', '.join(EXPORT_FORMATS)}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision {precision!r} cannot be exported; allowed: {', '.join(EXPORT_PRECISIONS)} "
                         f"({', '.join(p for p in PRECISIONS if p not in EXPORT_PRECISIONS)} runs through "
                         "optimize_for_inference)")
    if fmt not in EXPORT_PRECISIONS[precision]:
        raise ValueError(f"{precision} exports as {' or '.join(EXPORT_PRECISIONS[precision])}, not {fmt}")
    runtime = EXPORT_FORMATS[fmt]
    runtime.require()
    model = model.eval()
    batches = None
    if precision == "int8":
        from .quantize import CalibrationError, calibration_batches

        batches = calibration_batches(calibration, model)
        if len(batches[0]) < 2:
            raise CalibrationError("an int8 export calibrates on batches of at least 2 examples (the file keeps a "
                                   f"dynamic batch dimension); the first batch has {len(batches[0])}")
    out = Path(out)
    metadata = export_metadata(model, input_size, precision)
    with contextlib.ExitStack() as stack:
        # entered first, left last: the file itself goes into place after its companions
        paths = [stack.enter_context(atomic_path(target, replace=overwrite)) for target in (out, *runtime.companions(out))]
        if batches is not None:
            return _int8_checked(model, runtime, paths, input_size, batches, metadata)
        check = ExportCheck(_fp32_checked(model, runtime, paths, input_size, fold_bn, metadata))
        if has_initial_batchnorm_statistics(model):
            probe = randomise_batchnorm_statistics(copy.deepcopy(model))
            with tempfile.TemporaryDirectory() as folder:
                probe_paths = [str(Path(folder) / Path(p).name) for p in paths]
                check = ExportCheck(check.relative_difference,
                                    _fp32_checked(probe, runtime, probe_paths, input_size, fold_bn))
        worst = max(check.relative_difference, check.randomised_relative_difference or 0.0)
        if not worst <= rtol:
            raise ExportError(f"{precision} {fmt} export differs from the model: {check} (allowed {rtol:g})")
    return check
