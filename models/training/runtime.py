"""Where and how a run computes: processes and seeds, the device's memory format and mixed
precision, and evaluation (summed across processes under ``torchrun``)."""
from __future__ import annotations

import os
import random
from contextlib import nullcontext
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

if TYPE_CHECKING:
    from .options import TrainConfig

__all__ = ["amp_dtype", "evaluate", "grad_scaler", "uses_channels_last", "validation_shard"]


def _init_distributed() -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return rank, world, device


# --- model, freezing, optimizer ----------------------------------------------------------------

def _seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)  # timm's Mixup draws from NumPy's global generator
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    else:  # cuDNN picks the fastest convolution algorithm for each shape (on a GPU)
        torch.backends.cudnn.benchmark = True


# --- evaluation and the loop -------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, amp: bool = False,
             channels_last: bool = False) -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (%) over ``loader``.

    Under ``torch.distributed`` each process passes its own shard of the data and the sums are
    added up across processes, so every process returns the figures of the whole set.
    """
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += y.numel()
    if dist.is_initialized():
        totals = torch.tensor([loss_sum, correct, count], dtype=torch.float64, device=device)
        dist.all_reduce(totals)
        loss_sum, correct, count = totals[0].item(), int(totals[1].item()), int(totals[2].item())
    return loss_sum / max(count, 1), 100.0 * correct / max(count, 1)

def validation_shard(dataset: Dataset, rank: int, world: int) -> Dataset:
    """Every ``world``-th example from ``rank`` on: the shards of all processes partition the set
    exactly (unlike ``DistributedSampler``, no example is repeated to even them out), so
    ``evaluate``'s sums, added up across processes, are those of the whole set."""
    return dataset if world == 1 else Subset(dataset, range(rank, len(dataset), world))

def uses_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """``--channels-last`` as given, else on: on a CPU oneDNN runs convs, BatchNorm and pooling
    natively in NHWC (the default job trained 1.5x faster, a training step of batch 16 1.08-1.32x),
    and on a GPU cuDNN's NHWC kernels with bf16 trained mobilenet_v1 2.7x and xception 2.4x faster
    than bf16 alone (one H100)."""
    return cfg.channels_last if cfg.channels_last is not None else device.type in ("cpu", "cuda")

def amp_dtype(device_type: str, bf16_supported: bool) -> torch.dtype:
    """The dtype ``--amp`` autocasts to: bfloat16 on a CPU and on GPUs that have it (it needs no
    loss scaling), float16 on older GPUs, where a ``GradScaler`` keeps small gradients from
    underflowing to zero."""
    return torch.bfloat16 if device_type == "cpu" or bf16_supported else torch.float16

def _amp_dtype(device: torch.device) -> torch.dtype:
    return amp_dtype(device.type, device.type == "cuda" and torch.cuda.is_bf16_supported())

def grad_scaler(device: torch.device, amp: bool) -> torch.amp.GradScaler:
    """A ``GradScaler`` that scales only where ``--amp`` autocasts to float16 (else a no-op)."""
    enabled = amp and _amp_dtype(device) == torch.float16
    return torch.amp.GradScaler(device.type if device.type in ("cuda", "cpu") else "cuda", enabled=enabled)

def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return nullcontext()
    return torch.autocast(device.type, dtype=_amp_dtype(device))
