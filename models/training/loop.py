"""Fine-tuning: the training loop behind ``dszoo-train`` / ``scripts/train.py``.

Optimizer, scheduler and EMA come from timm; multi-process training is torch's own DDP
(``torchrun``); checkpoints are written atomically and resume exactly (model, optimizer,
scheduler, EMA, epoch, RNG states, best metric, history). The options and their checks live in
``options``, devices, precision and evaluation in ``runtime``.
"""
from __future__ import annotations

import copy
import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ..audio.mfcc import trained_front_end
from ..builder import ZooNet
from ..errors import RunError, UsageError
from ..files import atomic_path, remove_leftover_temporaries
from ..quiet import libraries_quiet
from ..registry import create_model
from ..registry import model_from_checkpoint
from ..weights import CheckpointError, load_pretrained, weights_front_end
from .data import DataSplits, ImageAugment, build_datasets, calibration_examples
from .options import TrainConfig, TrainResult, _check_same_model, _options_of_resumed_run, check_arguments, check_memory
from .run_files import (
    CHECKPOINT_FORMAT,
    RUN_FILES,
    RunFolderBusy,
    acquire_run_lock,
    check_out_dir,
    free_run_dir,
    plot_confusion,
    plot_curves,
    read_training_checkpoint,
    release_run_lock,
    save_checkpoint,
    write_metrics,
)
from .runtime import (_autocast, _init_distributed, _seed_everything, evaluate, grad_scaler, uses_channels_last,
                      validation_shard)

__all__ = ["frozen_parts", "train"]



def frozen_parts(model: ZooNet, spec: str) -> list[nn.Module]:
    """Modules ``--freeze`` names: none, backbone (all but the head) or stages:K."""
    if spec == "none":
        return []
    if spec == "backbone":
        return [model.stem, model.stages]
    if spec.startswith("stages:") and spec[7:].isdigit() and int(spec[7:]) <= len(model.stages):
        return [model.stem, *list(model.stages)[: int(spec[7:])]]
    raise UsageError(f"--freeze must be none, backbone or stages:K with K in 0..{len(model.stages)}, got {spec!r}")

def _set_train_mode(model: nn.Module, frozen: Sequence[nn.Module]) -> None:
    model.train()
    for part in frozen:
        part.eval()  # frozen BatchNorm keeps its statistics

def _build_model(cfg: TrainConfig) -> ZooNet:
    overrides: dict[str, Any] = {}
    in_chans = cfg.in_chans if cfg.in_chans is not None else (1 if cfg.dataset == "digits" else None)
    img = cfg.img_size if cfg.img_size is not None else (32 if cfg.dataset == "digits" else None)
    if in_chans is not None:
        overrides["in_chans"] = in_chans
    if img is not None:
        overrides["input_size"] = img
    if cfg.drop_rate is not None:
        overrides["drop_rate"] = cfg.drop_rate
    model = create_model(cfg.model, allow_large=cfg.allow_large, **overrides)
    if not isinstance(model, ZooNet):
        raise UsageError(f"{cfg.model} is not a classification model")
    return model

@dataclass
class _Session:
    """What one run works with, built step by step by ``train``."""

    cfg: TrainConfig
    rank: int
    world: int
    device: torch.device
    out: Path
    model: ZooNet
    data: DataSplits
    channels_last: bool
    val_loader: DataLoader
    chosen_out_dir: bool  # no --out-dir given: runs/trainN, which another run may claim first
    lock: Optional[Path] = None

    @property
    def lead(self) -> bool:
        """Rank 0: the process that prints and writes the run files."""
        return self.rank == 0

    def say(self, text: str) -> None:
        """A line for the user from rank 0, unless ``-qq``."""
        if self.lead and self.cfg.quiet < 2:
            print(text)

@dataclass
class _Trainer:
    """The optimizer side of a run: what a checkpoint saves and a resume restores."""

    train_model: nn.Module
    frozen: list[nn.Module]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: Any
    sampler: DistributedSampler
    loader: DataLoader
    criterion: nn.Module
    scaler: torch.amp.GradScaler
    steps_per_epoch: int
    mixup: Any = None  # timm's Mixup under --mixup

def train(cfg: TrainConfig) -> TrainResult:
    """Run (or resume, or only evaluate) one fine-tuning job as ``cfg`` describes.

    The steps: read a resumed run's options, set up processes and seeds, build the model and
    data, evaluate only (``eval_only``) or build the optimizer, restore the checkpoint, write
    ``args.json``, then train epoch by epoch, checkpointing each, and plot the curves. With
    ``quiet`` 2 or more the libraries' warnings (timm's, torch's) are silenced too: only errors.
    """
    if cfg.quiet < 2:
        return _train(cfg)
    with libraries_quiet():
        return _train(cfg)


def _train(cfg: TrainConfig) -> TrainResult:
    check_arguments(cfg)
    cfg, resume_ckpt = _options_of_resumed_run(cfg)
    if cfg.eval_only and not cfg.pretrained:
        raise UsageError("--eval-only needs --pretrained PATH")
    run = _start_session(cfg, resume_ckpt is not None)
    if resume_ckpt is not None:
        _check_same_model(run.model, resume_ckpt, cfg.resume)
    if cfg.eval_only:
        val_loss, top1 = evaluate(run.model, run.val_loader, run.device, amp=cfg.amp, channels_last=run.channels_last)
        if run.lead:
            print(f"{cfg.pretrained}: val_loss {val_loss:.4f}  val_top1 {top1:.2f}%  ({run.data.description})")
        if cfg.precision != "fp32":
            return _evaluate_low_precision(run, val_loss, top1)
        return TrainResult(val_loss=val_loss, val_top1=top1)
    trainer = _build_trainer(run)
    result = TrainResult(out_dir=run.out)
    start = _restore(run, trainer, resume_ckpt, result) if resume_ckpt is not None else 0
    try:
        _write_run_header(run)
        result.out_dir = run.out
        for epoch in range(start, cfg.total_epochs):
            row, top1, eval_model = _train_one_epoch(run, trainer, epoch)
            _refuse_non_finite(run, row, eval_model)
            _note_slow_average(run, trainer, epoch)
            result.history.append(row)
            improved = result.best_epoch is None or top1 > result.best_top1
            if improved:
                result.best_top1, result.best_epoch = top1, epoch + 1
            if run.lead:
                _save_epoch(run, trainer, result, epoch, top1, eval_model if improved else None)
        return _finish(run, result, trainer)
    finally:
        if run.lock is not None:
            release_run_lock(run.lock)

@torch.no_grad()
def _evaluate_low_precision(run: _Session, fp32_loss: float, fp32_top1: float) -> TrainResult:
    """``eval_only`` at ``precision``: the model made bf16 or int8 (calibrated on the first
    ``calibration_images`` training examples, augmentation included as the loader gives them)
    and evaluated on the same validation split, beside fp32, with the share of examples whose
    predicted class is the same."""
    from ..deployment import optimize_for_inference

    cfg = run.cfg
    eval_batch = 64  # one compiled shape for calibration and evaluation (the last batch is padded)
    calibration = calibration_examples(run.data.train, cfg.calibration_images, eval_batch)
    seen = sum(len(x) for x in calibration)
    model = run.model.to(memory_format=torch.contiguous_format).eval()
    val = [(x, y) for x, y in DataLoader(run.data.val, batch_size=eval_batch, shuffle=False)]
    batch = len(val[0][0])
    fast = optimize_for_inference(model, val[0][0], precision=cfg.precision, calibration=calibration)
    correct = agree = total = 0
    loss_sum = 0.0
    for x, y in val:
        low = fast(x) if len(x) == batch else _run_padded(fast, x, batch)
        loss_sum += F.cross_entropy(low.float(), y, reduction="sum").item()
        correct += (low.argmax(1) == y).sum().item()
        agree += (low.argmax(1) == model(x).argmax(1)).sum().item()
        total += len(y)
    top1 = 100.0 * correct / max(total, 1)
    if run.lead:
        used = fast.precision
        print(f"{cfg.pretrained}: {used} val_loss {loss_sum / max(total, 1):.4f}  val_top1 {top1:.2f}%  "
              f"({top1 - fp32_top1:+.2f} points vs fp32; same prediction as fp32 on {100.0 * agree / max(total, 1):.2f}%"
              f" of {total}; calibrated on {seen} training examples)"
              + (f"; note: {fast.failures.get(cfg.precision)}" if used != cfg.precision else ""))
    return TrainResult(val_loss=loss_sum / max(total, 1), val_top1=top1)

def _run_padded(fast: nn.Module, x: torch.Tensor, batch: int) -> torch.Tensor:
    """A compiled model specialised on ``batch`` rows run on a last, shorter batch: zero rows
    pad it, and their outputs are dropped."""
    pad = torch.zeros(batch - len(x), *x.shape[1:], dtype=x.dtype)
    return fast(torch.cat([x, pad]))[: len(x)]

def _start_session(cfg: TrainConfig, resuming: bool) -> _Session:
    """Processes, seeds, the run folder, the model (with pretrained weights), data and the
    validation loader."""
    rank, world, device = _init_distributed()
    _seed_everything(cfg.seed, cfg.deterministic)
    chosen_out_dir = cfg.out_dir is None
    if chosen_out_dir:
        cfg.out_dir = str(free_run_dir(Path("runs"), "train", world))
    out = Path(cfg.out_dir)
    if rank == 0 and not cfg.eval_only:
        check_out_dir(cfg, out)
    saved = read_training_checkpoint(cfg.pretrained, "--pretrained") if cfg.eval_only and cfg.pretrained else None
    if saved is not None:  # the checkpoint carries its model: --model, --num-classes, --img-size not needed
        model, notes = model_from_checkpoint(saved, f"--pretrained {cfg.pretrained}")
        if model.cfg.name != cfg.model:
            notes.insert(0, f"the checkpoint holds {model.cfg.name}; evaluating that (not --model {cfg.model})")
        cfg.model = model.cfg.name
    else:
        model, notes = _build_model(cfg), []
    trained_on = None
    if cfg.dataset == "speech_commands" and cfg.pretrained and not resuming:
        trained_on = (trained_front_end(saved, f"--pretrained {cfg.pretrained}") if saved is not None
                      else weights_front_end(cfg.pretrained))
    if trained_on is not None and trained_on != cfg.mfcc:  # features the weights were not trained on mean nothing
        notes.append(f"{cfg.pretrained} was trained on the {trained_on} MFCCs; "
                     f"{'evaluating' if cfg.eval_only else 'training'} with those (not --mfcc {cfg.mfcc})")
        cfg.mfcc = trained_on
    for note in notes if rank == 0 and cfg.quiet < 2 else []:
        print(f"note: {note}")
    if not cfg.eval_only and device.type == "cpu":
        check_memory(cfg, model)
    data = build_datasets(cfg.dataset, model.pretrained_cfg, data_dir=cfg.data_dir, classes=cfg.classes,
                          fake_size=cfg.fake_size, num_classes=cfg.num_classes, speech_task=cfg.speech_task,
                          augment=cfg.augment, hold_out_engine=cfg.hold_out_engine,
                          unknown_ratio=cfg.unknown_ratio, mfcc=cfg.mfcc,
                          image_augment=ImageAugment(cfg.image_augment, cfg.scale, cfg.hflip), seed=cfg.seed)
    if cfg.num_classes is not None and cfg.num_classes != data.num_classes:
        raise UsageError(f"--num-classes {cfg.num_classes} disagrees with {data.description}: it has {data.num_classes} classes")
    if saved is not None and model.num_classes != data.num_classes:
        raise UsageError(f"--eval-only {cfg.pretrained}: its model has {model.num_classes} classes, {data.description} "
                         f"has {data.num_classes}; evaluate it on data with its classes")
    if model.num_classes != data.num_classes:
        model.reset_classifier(data.num_classes)
    if cfg.pretrained and not resuming and saved is None:
        report = load_pretrained(model, cfg.pretrained)
        if report["head_reset"] and cfg.eval_only:
            raise UsageError(f"--eval-only {cfg.pretrained}: its classifier does not have the {data.num_classes} classes "
                             f"of {data.description}, so the figures would be those of a freshly initialised head")
        if rank == 0 and report["head_reset"] and cfg.quiet < 2:
            print(f"note: {cfg.pretrained}: new {data.num_classes}-class head, freshly initialised")
    if model.cfg.reparameterized and not cfg.eval_only:
        raise UsageError(f"{cfg.pretrained or model.cfg.name}: holds the reparameterised (inference) form of "
                         f"{model.cfg.name}, one conv per block; training runs its multi-branch form: start from the "
                         "weights before dszoo.reparameterize (--eval-only evaluates this one)")
    # what the trained model's input and outputs are, for load_checkpoint and every exported file
    model.pretrained_cfg = {**model.pretrained_cfg, **({"class_names": data.class_names} if data.class_names else {}),
                            **({"mfcc": cfg.mfcc} if cfg.dataset == "speech_commands" else {})}
    model.to(device)
    channels_last = uses_channels_last(cfg, device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    val_loader = DataLoader(validation_shard(data.val, rank, world), batch_size=max(cfg.batch_size, 128),
                            shuffle=False, num_workers=cfg.workers)
    return _Session(cfg, rank, world, device, out, model, data, channels_last, val_loader, chosen_out_dir)

WARMUP_SHARE = 0.1
"""Warm-up takes at most this share of a run's optimizer steps, however many epochs are asked."""


def warmup_steps(warmup_epochs: int, steps_per_epoch: int, total_epochs: int) -> int:
    """Optimizer steps of linear warm-up: ``warmup_epochs`` of them, scaled down to at most
    ``WARMUP_SHARE`` of the run (``--epochs 1`` warms up for a tenth of its epoch, not all of it)."""
    return min(warmup_epochs * steps_per_epoch, int(WARMUP_SHARE * total_epochs * steps_per_epoch))


def _build_trainer(run: _Session) -> _Trainer:
    """Freezing, parameter groups (``lr`` for the body, ``lr_head`` for the classifier), timm's
    optimizer, cosine schedule with warm-up and EMA, DDP and the training loader."""
    from timm.optim import create_optimizer_v2
    from timm.scheduler import CosineLRScheduler
    from timm.utils import ModelEmaV3

    cfg, model = run.cfg, run.model
    frozen = frozen_parts(model, cfg.freeze)
    for part in frozen:
        part.requires_grad_(False)
    head = [p for p in model.get_classifier().parameters() if p.requires_grad]
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    groups = [g for g in ({"params": body, "lr": cfg.lr}, {"params": head, "lr": cfg.lr_head or cfg.lr}) if g["params"]]
    optimizer = create_optimizer_v2(groups, opt=cfg.opt, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = ModelEmaV3(model, decay=cfg.ema_decay, use_warmup=cfg.ema_warmup) if cfg.ema else None
    train_model: nn.Module = model
    if run.world > 1:
        ids = [run.device.index] if run.device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    train_set = run.data.train
    sampler = DistributedSampler(train_set, num_replicas=run.world, rank=run.rank, shuffle=True, seed=cfg.seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, num_workers=cfg.workers,
                        drop_last=len(train_set) // run.world > cfg.batch_size, pin_memory=run.device.type == "cuda",
                        persistent_workers=cfg.workers > 0)
    steps = min(len(loader), cfg.max_batches or len(loader))  # optimizer steps per epoch
    warmup = warmup_steps(cfg.warmup_epochs, steps, cfg.total_epochs)
    # timm's cosine schedule over optimizer steps, not epochs, so that a short run still anneals
    scheduler = CosineLRScheduler(optimizer, t_initial=max(1, cfg.total_epochs * steps - warmup), lr_min=cfg.lr * 0.01,
                                  warmup_t=warmup, warmup_lr_init=cfg.lr * 0.1, warmup_prefix=True, t_in_epochs=False)
    mixup, criterion = _mixup_and_criterion(cfg, run.data.num_classes)
    if cfg.qat:
        train_model = _quantization_aware(run, loader)
    if cfg.compile:
        # dynamic=False: every ZooNet shares one forward, and dynamo would otherwise recompile the
        # second model it meets with dynamic shapes (slower code, minutes of compiling)
        train_model = torch.compile(train_model, dynamic=False)
    return _Trainer(train_model, frozen, optimizer, scheduler, ema, sampler, loader, criterion,
                    grad_scaler(run.device, cfg.amp), steps, mixup)

def _mixup_and_criterion(cfg: TrainConfig, num_classes: int) -> tuple[Any, nn.Module]:
    """Cross-entropy with ``--label-smoothing``; under ``--mixup``, timm's ``Mixup`` (which
    smooths the targets it mixes) and its soft-target cross-entropy."""
    if cfg.mixup <= 0:
        return None, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    from timm.data import Mixup
    from timm.loss import SoftTargetCrossEntropy

    mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=0.0, label_smoothing=cfg.label_smoothing,
                  num_classes=num_classes)
    return mixup, SoftTargetCrossEntropy()

def mix_batch(mixup: Any, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch mixed by timm's ``Mixup`` (Zhang et al. 2018, mixup: one Beta-drawn weight for the
    batch, each example with its mirror, the targets alike) and its soft targets. timm mixes even
    batches only: an odd batch's last example stays as it is, with its smoothed one-hot target."""
    if len(x) % 2 == 0:
        return mixup(x, y)
    from timm.data.mixup import mixup_target

    head, target = mixup(x[:-1].clone(), y[:-1])
    last = mixup_target(y[-1:], mixup.num_classes, 1.0, mixup.label_smoothing)
    return torch.cat([head, x[-1:]]), torch.cat([target, last])

def _quantization_aware(run: _Session, loader: DataLoader) -> nn.Module:
    """``--qat``: the model with fake quantization, sharing its weights (the optimizer and the
    checkpoints keep working on ``run.model``), exported at a training batch's shape."""
    from ..deployment.quantize import QuantizationAwareModel

    if run.world > 1:
        raise UsageError("--qat runs in one process (the fake-quantized graph is not wrapped in DDP here)")
    example = next(iter(loader))[0].to(run.device)
    if len(example) == 1:  # a graph exported at batch 1 would take batch 1 alone
        example = example.expand(2, *example.shape[1:])
    if run.channels_last:
        example = example.contiguous(memory_format=torch.channels_last)
    return QuantizationAwareModel(run.model, example)

def _restore(run: _Session, trainer: _Trainer, ckpt: dict[str, Any], result: TrainResult) -> int:
    """Load a checkpoint's model, optimizer, scheduler, EMA, history and RNG states; return the
    epoch to continue from."""
    run.model.load_state_dict(ckpt["model"])
    if run.cfg.qat:
        if not isinstance(ckpt.get("qat"), dict):
            raise CheckpointError(f"--resume {run.cfg.resume}: holds no fake-quantizer state (written by an older dszoo); "
                                  "a --qat run resumes exactly only from its own checkpoints")
        trainer.train_model.load_state_dict(ckpt["qat"])
    trainer.optimizer.load_state_dict(ckpt["optimizer"])
    trainer.scheduler.load_state_dict(ckpt["scheduler"])
    # --epochs may have grown since: the cosine then spans the whole, longer run (unchanged, this
    # is the saved value and the resume stays exact)
    trainer.scheduler.t_initial = max(1, run.cfg.total_epochs * trainer.steps_per_epoch - trainer.scheduler.warmup_t)
    if trainer.ema is not None:
        trainer.ema.load_state_dict(ckpt["ema"])
    result.history, result.best_top1 = list(ckpt["history"]), ckpt["best_top1"]
    result.best_epoch = ckpt.get("best_epoch", max(result.history, key=lambda r: r["val_top1"])["epoch"]
                                 if result.history else None)
    torch.set_rng_state(ckpt["rng"]["torch"])
    random.setstate(_to_random_state(ckpt["rng"]["python"]))
    if "numpy" in ckpt["rng"]:  # checkpoints of older dszoo have none
        np.random.set_state(_to_numpy_state(ckpt["rng"]["numpy"]))
    if "cuda" in ckpt["rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
    if ckpt.get("scaler"):
        trainer.scaler.load_state_dict(ckpt["scaler"])
    return ckpt["epoch"]

def _claim_run_folder(run: _Session) -> None:
    """Take the run folder's lock (``acquire_run_lock``); a folder chosen by default that another
    run claimed first gives way to the next free one."""
    while True:
        try:
            run.lock = acquire_run_lock(run.out, note=run.say)
            return
        except RunFolderBusy:
            if not run.chosen_out_dir or run.world > 1:
                raise
            run.out = free_run_dir(run.out.parent, "train", run.world)
            run.cfg.out_dir = str(run.out)

def _write_run_header(run: _Session) -> None:
    """Rank 0 claims the folder, clears temporaries a killed write left there and the files of
    an ``overwrite``-n run (only now that every option has been checked, so a failed start
    loses nothing), writes ``args.json`` and says what is about to run."""
    if not run.lead:
        return
    _claim_run_folder(run)
    cfg, out = run.cfg, run.out
    for leftover in remove_leftover_temporaries(out, RUN_FILES):
        run.say(f"note: removed {leftover.name}, left by a write that was killed")
    if cfg.overwrite:
        for f in RUN_FILES:
            (out / f).unlink(missing_ok=True)
    with atomic_path(out / "args.json") as tmp:
        Path(tmp).write_text(json.dumps({**asdict(cfg), "world_size": run.world, "dataset_info": run.data.description},
                                        indent=2))
    run.say(f"training {cfg.model} on {run.data.description}, {cfg.total_epochs} epochs, {run.world} process(es) -> {out}")

@torch.no_grad()
def _recompute_batchnorm(run: _Session, trainer: _Trainer, model: nn.Module) -> None:
    """``--precise-bn``: BatchNorm's running statistics recomputed as plain averages over one
    pass of the training data (at most ``--max-batches`` batches) with the weights as they are
    now (torch's ``update_bn``), so that evaluation normalises as the weights expect; the
    statistics otherwise trail the weights by their momentum, which a short run never outgrows."""
    import itertools

    from torch.optim.swa_utils import update_bn

    batches = itertools.islice(trainer.loader, run.cfg.max_batches)
    memory_format = torch.channels_last if run.channels_last else torch.contiguous_format
    update_bn(((x.to(run.device).contiguous(memory_format=memory_format), y) for x, y in batches), model,
              device=run.device)


EMA_START_SHARE = 0.5
"""Above this share of its starting weights the EMA, which validation and checkpoints use, is
said to be still near its start."""


def _note_slow_average(run: _Session, trainer: _Trainer, epoch: int) -> None:
    """Without the warm-up, the EMA after n steps still holds ``ema_decay ** n`` of the
    weights it started from: say so while that is more than ``EMA_START_SHARE``, since the
    figures measure it (a short fine-tune otherwise stays at its start, silently)."""
    cfg = run.cfg
    if trainer.ema is None or cfg.ema_warmup:
        return
    steps = (epoch + 1) * min(trainer.steps_per_epoch, cfg.max_batches or trainer.steps_per_epoch)
    share = cfg.ema_decay ** steps
    if share > EMA_START_SHARE:
        run.say(f"note: after {steps} steps the EMA (--ema-decay {cfg.ema_decay:g}, --no-ema-warmup) is still "
                f"{100 * share:.0f}% the starting weights, and validation measures it; drop --no-ema-warmup, "
                f"lower --ema-decay or train longer")


def _last_good(run: _Session) -> str:
    """Where a stopped run can continue from, in words."""
    last = run.out / "last.pt"
    return f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written"

def _refuse_non_finite(run: _Session, row: dict[str, float], model: nn.Module) -> None:
    """Stop (``RunError``) rather than checkpoint weights or a validation loss that are not
    finite: resuming from them could only fail again."""
    bad = [name for name, p in model.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad or not math.isfinite(row["val_loss"]):
        what = f"weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} are not finite" if bad else \
            f"the validation loss is {row['val_loss']}"
        raise RunError(f"epoch {row['epoch']}: {what}; not saved, stopped; {_last_good(run)} "
                       "(try a lower --lr or --clip-grad)")

def _train_one_epoch(run: _Session, trainer: _Trainer, epoch: int) -> tuple[dict[str, float], float, nn.Module]:
    """One pass over the training data, then validation; returns the epoch's metrics row, its
    top-1 and the model that was evaluated (the EMA where there is one)."""
    from tqdm import tqdm

    cfg, device = run.cfg, run.device
    t0 = time.perf_counter()
    trainer.sampler.set_epoch(epoch)
    if callable(getattr(run.data.train, "set_epoch", None)):  # augmentation drawn per epoch and clip (speech)
        run.data.train.set_epoch(epoch)
    _set_train_mode(trainer.train_model, trainer.frozen)
    lr = trainer.optimizer.param_groups[0]["lr"]
    loss_sum, seen = 0.0, 0
    bar = tqdm(trainer.loader, desc=f"epoch {epoch + 1}/{cfg.total_epochs}", leave=False,
               disable=cfg.quiet > 0 or not run.lead or None)
    for step, (x, y) in enumerate(bar):
        if cfg.max_batches is not None and step >= cfg.max_batches:
            break
        trainer.scheduler.step_update(epoch * trainer.steps_per_epoch + step)
        lr = trainer.optimizer.param_groups[0]["lr"] if step == 0 else lr
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        target = y
        if trainer.mixup is not None:
            x, target = mix_batch(trainer.mixup, x, y)
        if run.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, cfg.amp):
            loss = trainer.criterion(trainer.train_model(x).float(), target)
        if not torch.isfinite(loss):
            raise RunError(f"loss became {loss.item()} at epoch {epoch + 1}, step {step + 1}; stopped, "
                           f"{_last_good(run)} (try a lower --lr or --clip-grad)")
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.scaler.scale(loss).backward()
        if cfg.clip_grad:
            trainer.scaler.unscale_(trainer.optimizer)
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.clip_grad)
        trainer.scaler.step(trainer.optimizer)
        trainer.scaler.update()
        if trainer.ema is not None:  # the step sets the warm-up's decay; without it every step uses ema_decay
            trainer.ema.update(run.model, step=epoch * trainer.steps_per_epoch + step if cfg.ema_warmup else None)
        loss_sum += loss.item() * y.numel()
        seen += y.numel()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    eval_model = trainer.ema.module if trainer.ema is not None else run.model
    if cfg.precise_bn:
        _recompute_batchnorm(run, trainer, eval_model)
    if run.world > 1:
        # BatchNorm statistics (and EMA buffers) drift apart in the processes' last steps:
        # validate rank 0's model everywhere, the one its checkpoint saves
        for buffer in eval_model.buffers():
            dist.broadcast(buffer, src=0)
    # --qat measures the fake-quantized model (what int8 will give); its weights are run.model's
    measured = trainer.train_model if cfg.qat else eval_model
    val_loss, top1 = evaluate(measured, run.val_loader, device, amp=cfg.amp, channels_last=run.channels_last)
    row = dict(epoch=epoch + 1, train_loss=round(loss_sum / max(seen, 1), 6), val_loss=round(val_loss, 6),
               val_top1=round(top1, 4), lr=lr, seconds=round(time.perf_counter() - t0, 3))
    if run.lead and cfg.quiet < 2:
        tqdm.write(f"epoch {epoch + 1:>3}/{cfg.total_epochs}  train_loss {row['train_loss']:.4f}  val_loss {val_loss:.4f}  "
                   f"val_top1 {top1:6.2f}%  lr {lr:.2e}  {row['seconds']:.1f}s")
    return row, top1, eval_model

def _save_epoch(run: _Session, trainer: _Trainer, result: TrainResult, epoch: int, top1: float,
                best_model: Optional[nn.Module]) -> None:
    """Write ``last.pt`` (and ``best.pt`` from ``best_model`` when the epoch improved) and
    ``metrics.csv``, each atomically."""
    cfg = run.cfg
    payload = {
        "format": CHECKPOINT_FORMAT, "model_name": cfg.model, "config": asdict(cfg), "epoch": epoch + 1,
        "model_config": run.model.cfg.model_dump(mode="json"), "class_names": run.data.class_names,
        "model": run.model.state_dict(), "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "ema": trainer.ema.state_dict() if trainer.ema is not None else None, "best_top1": result.best_top1,
        "best_epoch": result.best_epoch, "history": result.history, "val_top1": top1,
        "rng": {"torch": torch.get_rng_state(), "python": _from_random_state(random.getstate()),
                "numpy": _from_numpy_state(np.random.get_state()),
                **({"cuda": torch.cuda.get_rng_state_all()} if torch.cuda.is_available() else {})},
        "scaler": trainer.scaler.state_dict(),
        # --qat: the fake-quantized graph's own state (observers' ranges, scales, zero points)
        "qat": trainer.train_model.state_dict() if cfg.qat else None,
    }
    if best_model is not None:
        save_checkpoint(run.out / "best.pt", {**payload, "model": best_model.state_dict()})
    save_checkpoint(run.out / "last.pt", payload)
    write_metrics(run.out, result.history)

def _finish(run: _Session, result: TrainResult, trainer: _Trainer) -> TrainResult:
    """The last epoch's figures, the curves plot, ``--qat``'s int8 model and the closing line."""
    if result.history:
        result.val_loss, result.val_top1 = result.history[-1]["val_loss"], result.history[-1]["val_top1"]
    if run.lead and result.history:
        plot_curves(run.out, result.history)
        if run.data.test is not None and (run.out / "best.pt").is_file():
            _test_best(run, result)
        if run.cfg.qat and (run.out / "best.pt").is_file():
            _write_int8(run, trainer.train_model, result)
        written = [f for f in RUN_FILES if (run.out / f).is_file()]
        run.say(f"best val_top1 {result.best_top1:.2f}% (epoch {result.best_epoch}); {run.out} holds "
                f"{', '.join(written)}")
    if dist.is_initialized():
        dist.barrier()
    return result

@torch.no_grad()
def _write_int8(run: _Session, qat_model: nn.Module, result: TrainResult) -> None:
    """``--qat``'s deployable model: ``best.pt``'s weights converted to int8 with the ranges the
    fake quantizers observed, measured on the validation split and written as ``int8.pt2``
    (checked against the converted graph on load, as ``dszoo-export`` checks its files)."""
    from ..deployment.export import export_metadata
    from ..deployment.runtimes import RUNTIMES
    from ..deployment.optimize import relative_difference

    best = torch.load(run.out / "best.pt", map_location=run.device, weights_only=True)["model"]
    run.model.load_state_dict(best)  # in place: the fake-quantized graph shares these tensors
    int8 = qat_model.convert()
    correct = total = 0
    for x, y in run.val_loader:
        correct += (int8(x.to(run.device)).argmax(1).cpu() == y).sum().item()
        total += len(y)
    result.int8_top1 = 100.0 * correct / max(total, 1)
    x = next(iter(run.val_loader))[0][:4].to(run.device)
    with atomic_path(run.out / "int8.pt2") as tmp:
        RUNTIMES["pt2"].write(int8, x, [tmp], export_metadata(run.model, tuple(x.shape[1:]), "int8"))
        difference = relative_difference(RUNTIMES["pt2"].load([tmp])(x), int8(x))
        if not difference <= 1e-5:
            raise RunError(f"int8.pt2 differs from the converted model by {difference:.2e}; not written")
    run.say(f"int8 (quantization-aware, best.pt converted) val_top1 {result.int8_top1:.2f}% on {total} examples; "
            f"written to {run.out / 'int8.pt2'}")

@torch.no_grad()
def _test_best(run: _Session, result: TrainResult) -> None:
    """Top-1 of ``best.pt`` on the held-out test split, and its confusion matrix
    (``confusion.png`` beside ``curves.png``)."""
    model = copy.deepcopy(run.model)
    model.load_state_dict(torch.load(run.out / "best.pt", map_location=run.device, weights_only=True)["model"])
    model.eval()
    loader = DataLoader(run.data.test, batch_size=256, shuffle=False)
    n = run.data.num_classes
    confusion = torch.zeros(n, n, dtype=torch.long)
    for x, y in loader:
        predicted = model(x.to(run.device)).argmax(1).cpu()
        confusion += torch.bincount(y * n + predicted, minlength=n * n).view(n, n)
    total = int(confusion.sum())
    result.test_top1 = 100.0 * float(confusion.diag().sum()) / max(total, 1)
    names = run.data.class_names or [str(i) for i in range(n)]
    run.say(f"test top-1 of best.pt {result.test_top1:.2f}% on {total} held-out clips; confusion matrix in "
            f"{run.out / 'confusion.png'}")
    plot_confusion(run.out, confusion, names, f"{run.cfg.model}, best.pt (epoch {result.best_epoch}) on {total} "
                                              f"held-out test clips: top-1 {result.test_top1:.2f}%")

def _from_random_state(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]

def _to_random_state(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss

def _from_numpy_state(state: tuple) -> list:
    """NumPy's global generator state as types ``torch.load(weights_only=True)`` reads."""
    name, keys, pos, has_gauss, gauss = state
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]

def _to_numpy_state(state: list) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss
