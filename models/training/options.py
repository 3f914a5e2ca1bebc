"""The options of a training run: their defaults (``TrainConfig``), the checks made before
anything is read or written, and what a resumed run keeps from its checkpoint."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from ..builder import ZooNet
from ..config import close_matches, config_changes
from ..errors import UsageError
from ..weights import CheckpointError, tensor_problems
from .run_files import read_checkpoint

__all__ = ["RESUME_MAY_CHANGE", "TrainConfig", "TrainResult", "check_arguments", "check_memory"]


@dataclass
class TrainConfig:
    """Every option of ``scripts/train.py`` (``--help`` explains them)."""

    model: str = "mobilenet_v1_025"
    num_classes: Optional[int] = None
    in_chans: Optional[int] = None
    img_size: Optional[int] = None
    pretrained: Optional[str] = None
    freeze: str = "none"
    dataset: str = "digits"
    data_dir: Optional[str] = None
    speech_task: str = "12"
    augment: str = "basic"  # speech_commands: audio.augment levers or preset
    image_augment: str = "imagenet"  # imagefolder, cifar10, fake: training.data.IMAGE_AUGMENT
    scale: Optional[tuple[float, float]] = None  # the random-resized crop's area range (the preset's)
    hflip: Optional[float] = None  # horizontal flip probability (the preset's)
    precise_bn: bool = False  # recompute BatchNorm statistics over the training data before each validation
    mfcc: str = "mlperf_tiny"  # speech_commands: the MFCC front end (audio.MFCC_PRESETS)
    hold_out_engine: Optional[str] = None  # speech_commands: test on every clip of this engine, train on the rest
    unknown_ratio: float = 0.125  # speech_commands, 12-class task: unknown clips per keyword clip in training
    precision: str = "fp32"  # with eval_only: also evaluate the model in bf16 or int8
    qat: bool = False  # quantization-aware training: fake int8 in every step, int8.pt2 at the end
    compile: bool = False
    calibration_images: int = 256
    classes: Optional[list[int]] = None
    fake_size: int = 64
    epochs: Optional[int] = None
    batch_size: int = 32
    opt: str = "adamw"
    lr: float = 1e-2
    lr_head: Optional[float] = None
    weight_decay: float = 0.05
    warmup_epochs: int = 1
    label_smoothing: float = 0.1
    mixup: float = 0.0  # Beta(mixup, mixup) mixing of each batch with itself reversed (timm's Mixup); 0: off
    clip_grad: Optional[float] = 5.0
    drop_rate: Optional[float] = None
    ema: bool = False
    ema_decay: float = 0.998
    ema_warmup: bool = True  # timm's EMA warm-up: the decay grows from 0 towards ema_decay over the first steps
    amp: bool = False
    channels_last: Optional[bool] = None  # None: on (see uses_channels_last)
    seed: int = 0
    deterministic: bool = False
    workers: int = 0
    out_dir: Optional[str] = None
    resume: Optional[str] = None
    overwrite: bool = False
    eval_only: bool = False
    max_batches: Optional[int] = None
    quiet: int = 0  # 1: no progress bars; 2: no epoch lines or notes either
    allow_large: bool = False
    given: tuple[str, ...] = ()
    """The options a command line named (``dszoo-train`` fills it), so that ``--resume`` weighs an
    option given at its default value as given; from Python, those that differ from the defaults."""

    @property
    def total_epochs(self) -> int:
        return self.epochs if self.epochs is not None else 15

@dataclass
class TrainResult:
    """What a run produced: per-epoch metrics and the best validation top-1."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_top1: float = 0.0
    best_epoch: Optional[int] = None  # the epoch best.pt holds; None until one is written
    out_dir: Optional[Path] = None
    val_loss: float = float("nan")
    val_top1: float = float("nan")
    test_top1: Optional[float] = None  # of best.pt, on the held-out test split where the data has one
    int8_top1: Optional[float] = None  # --qat: best.pt converted to int8, on the validation split


IMAGE_DATASETS = ("imagefolder", "cifar10", "fake")
DATASET_OPTIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "classes": ("--classes", ("digits",)),
    "data_dir": ("--data-dir", ("imagefolder", "cifar10", "speech_commands")),
    "fake_size": ("--fake-size", ("fake",)),
    "image_augment": ("--image-augment", IMAGE_DATASETS),
    "scale": ("--scale", IMAGE_DATASETS),
    "hflip": ("--hflip", IMAGE_DATASETS),
    "speech_task": ("--speech-task", ("speech_commands",)),
    "augment": ("--augment", ("speech_commands",)),
    "mfcc": ("--mfcc", ("speech_commands",)),
    "hold_out_engine": ("--hold-out-engine", ("speech_commands",)),
    "unknown_ratio": ("--unknown-ratio", ("speech_commands",)),
}
"""The options that only some datasets read (by ``TrainConfig`` field): the flag, and those datasets."""


def _options_of_other_datasets(cfg: TrainConfig) -> list[tuple[bool, str]]:
    """(refuse, why) for each option of ``DATASET_OPTIONS`` that ``cfg.dataset`` would not read, given
    on the command line (even at its default value) or set to another value than the default."""
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    out = []
    for name, (flag, datasets) in DATASET_OPTIONS.items():
        given = name in cfg.given or getattr(cfg, name) != defaults[name]
        if name == "data_dir":
            why = f"--dataset {cfg.dataset} reads no --data-dir"
        elif datasets == IMAGE_DATASETS:
            why = f"{flag} is for image datasets ({', '.join(IMAGE_DATASETS)}), not {cfg.dataset}"
        else:
            why = f"{flag} is for --dataset {' or '.join(datasets)}, not {cfg.dataset}"
        out.append((given and cfg.dataset not in datasets, why))
    return out


def check_arguments(cfg: TrainConfig) -> None:
    """Refuse contradictory options and unknown optimizers before anything is read or written."""
    pairs = [
        (cfg.resume and cfg.pretrained, "--resume continues a run with its own weights; drop --pretrained"),
        (cfg.resume and cfg.eval_only, "--eval-only evaluates --pretrained; it does not take --resume"),
        (cfg.resume and cfg.overwrite, "--resume appends to its run; it does not take --overwrite"),
        (cfg.eval_only and cfg.overwrite, "--eval-only writes no files; it does not take --overwrite"),
        *_options_of_other_datasets(cfg),
        (cfg.scale is not None and not 0 < cfg.scale[0] <= cfg.scale[1] <= 1,
         f"--scale {cfg.scale[0] if cfg.scale else ''} {cfg.scale[1] if cfg.scale else ''}: allowed: 0 < MIN <= MAX <= 1"),
        (cfg.image_augment == "none" and (cfg.scale is not None or cfg.hflip is not None),
         "--image-augment none crops and flips nothing; it does not take --scale or --hflip"),
        (cfg.max_batches is not None and cfg.eval_only, "--max-batches limits training; --eval-only does none"),
        (cfg.precision != "fp32" and not cfg.eval_only, f"--precision {cfg.precision} evaluates a model: it needs "
                                                        "--eval-only --pretrained PATH"),
        (cfg.qat and cfg.eval_only, "--qat trains; to evaluate a model in int8 use --eval-only --precision int8"),
        *[(cfg.qat and bad, f"--qat fake-quantizes the exported training graph; it does not take {flag}")
          for bad, flag in ((cfg.ema, "--ema"), (cfg.amp, "--amp"), (cfg.compile, "--compile"),
                            (cfg.freeze != "none", f"--freeze {cfg.freeze} (its BatchNorm would keep training)"))],
    ]
    for bad, message in pairs:
        if bad:
            raise UsageError(message)
    if cfg.dataset == "speech_commands":
        from ..audio.augment import parse_levers

        try:
            parse_levers(cfg.augment)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    _check_optimizer(cfg)

def _check_optimizer(cfg: TrainConfig) -> None:
    """``--opt`` must name a timm optimizer that builds and steps here: timm lists some that need
    CUDA or packages that are not installed, which would otherwise fail after the run started."""
    from timm.optim import create_optimizer_v2, list_optimizers

    base_opt = cfg.opt.lower().split("_")[-1]  # timm reads prefixes such as "lookahead_"
    if base_opt not in list_optimizers():
        hint = close_matches(base_opt, list_optimizers())
        raise UsageError(f"--opt {cfg.opt}: not a timm optimizer"
                         + (f"; did you mean {', '.join(map(repr, hint))}?" if hint else " (see timm.optim.list_optimizers())"))
    probe = nn.Parameter(torch.ones(2))
    try:
        optimizer = create_optimizer_v2([probe], opt=cfg.opt, lr=min(cfg.lr, 1e-3), weight_decay=cfg.weight_decay)
        probe.sum().backward()
        optimizer.step()
    except Exception as exc:  # noqa: BLE001 - missing packages, CUDA-only kernels, bad arguments
        detail = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise UsageError(f"--opt {cfg.opt}: timm lists it, but it cannot run here ({detail})") from None

def check_memory(cfg: TrainConfig, model: ZooNet, available: Optional[int] = None) -> None:
    """Refuse, before any batch is allocated, a ``batch_size`` and input size whose training
    step would need more memory than the machine has available: activations kept for the
    backward pass and their gradients, twice the fp32 activations of one image per image, and
    four copies of the weights (weights, gradients, two optimizer states)."""
    from ..plan import plan_model

    plan = plan_model(model.cfg)
    need = 2 * plan.activation_bytes * cfg.batch_size + 4 * 4 * plan.params
    available = available if available is not None else available_memory()
    if available and need > available:
        c, h, w = plan.input_size
        raise UsageError(f"--batch-size {cfg.batch_size} at {c}x{h}x{w} needs about {need / 2**30:.1f} GiB to train "
                         f"{cfg.model}, more than the {available / 2**30:.1f} GiB available here; lower --batch-size "
                         "or --img-size")

def available_memory() -> Optional[int]:
    """Bytes of memory available to a new allocation (Linux's MemAvailable); None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# --- distributed -------------------------------------------------------------------------------

RESUME_MAY_CHANGE = ("epochs", "quiet", "workers", "allow_large", "compile")
"""Options a resumed run takes from the command line; every other comes from its checkpoint."""

_PER_INVOCATION = ("resume", "overwrite", "eval_only", "out_dir", "given")
"""What one command asked for, never read back from a checkpoint (a resumed run that read
``overwrite`` back would delete its own files)."""

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")

def _options_of_resumed_run(cfg: TrainConfig) -> tuple[TrainConfig, Optional[dict[str, Any]]]:
    """With ``resume``: the saved run's options (and its checkpoint), with ``RESUME_MAY_CHANGE``
    taken from ``cfg``. Refused: options given that contradict the run's, a checkpoint older
    than its folder's ``last.pt``, and a run that has already trained every epoch asked for.
    Otherwise ``cfg`` as given."""
    if not cfg.resume:
        return cfg, None
    ckpt = read_checkpoint(cfg.resume)
    known = {f.name for f in fields(TrainConfig)}
    saved_options = {"ema_warmup": False, **ckpt["config"]}  # runs saved before the warm-up existed had none
    saved = TrainConfig(**{k: v for k, v in saved_options.items() if k in known and k not in _PER_INVOCATION})
    folder = Path(cfg.resume).parent
    defaults = TrainConfig()

    def given(name: str) -> bool:  # named on the command line, or set away from its default in Python
        return name in cfg.given or getattr(cfg, name) != getattr(defaults, name)

    contradictions = [
        f"{_flag(f.name)} {getattr(cfg, f.name)!r} (the run's: {getattr(saved, f.name)!r})"
        for f in fields(TrainConfig)
        if f.name not in RESUME_MAY_CHANGE + _PER_INVOCATION and given(f.name)
        and getattr(cfg, f.name) != getattr(saved, f.name)
    ]
    if cfg.out_dir is not None and Path(cfg.out_dir).resolve() != folder.resolve():
        contradictions.append(f"--out-dir {cfg.out_dir!r} (the run's: {str(folder)!r})")
    if contradictions:
        raise UsageError(f"--resume continues a run with its own options, and these differ: {', '.join(contradictions)}; "
                         f"drop them or start a new run (a resume may change only "
                         f"{', '.join(_flag(n) for n in RESUME_MAY_CHANGE)})")
    latest = folder / "last.pt"
    if Path(cfg.resume).resolve() != latest.resolve() and latest.is_file():
        newer = read_checkpoint(str(latest))["epoch"]
        if newer > ckpt["epoch"]:
            raise UsageError(f"--resume {cfg.resume}: {latest} holds a later epoch ({newer} > {ckpt['epoch']}) that "
                             f"resuming would overwrite; resume from {latest}, or copy {cfg.resume} into a new folder")
    for name in RESUME_MAY_CHANGE:
        if given(name):
            setattr(saved, name, getattr(cfg, name))
    saved.resume, saved.out_dir = cfg.resume, str(folder)
    if ckpt["epoch"] >= saved.total_epochs:
        raise UsageError(f"--resume {cfg.resume}: the run has already trained all {saved.total_epochs} epochs; pass "
                         f"--epochs N with N > {ckpt['epoch']} to train it longer")
    return saved, ckpt

def _network_of(cfg: Any, saved: dict) -> tuple[Any, dict]:
    """``saved`` with the defaults of keys added since it was written, and ``cfg``, both less
    what does not make the network (where the package ships weights)."""
    from pydantic import ValidationError

    from ..config import ModelConfig

    try:
        saved = ModelConfig.model_validate(saved).model_dump(mode="json")
    except ValidationError:
        pass  # compared as it is: the differences name what is wrong
    current = cfg.model_dump(mode="json")
    for dump in (saved, current):
        dump.pop("bundled_weights", None)
    return saved, current


def _check_same_model(model: ZooNet, ckpt: dict[str, Any], path: str) -> None:
    """A resumed run must rebuild the network it saved: a config edited since gives one line
    saying what changed, not a state-dict traceback."""
    saved = ckpt.get("model_config")
    changes = config_changes(*_network_of(model.cfg, saved)) if isinstance(saved, dict) else []
    if changes:
        raise UsageError(f"--resume {path}: the model's config changed since the run was saved ({'; '.join(changes[:5])}"
                         f"{' ...' if len(changes) > 5 else ''}); restore it, or start a new run")
    problems = tensor_problems(ckpt["model"], model.state_dict()) if ckpt["model"].keys() == model.state_dict().keys() \
        else [f"its weights are those of another network ({len(ckpt['model'])} tensors, the model has "
              f"{len(model.state_dict())})"]
    problems += [f"{k}: {tuple(v.shape)} in the checkpoint, {tuple(model.state_dict()[k].shape)} in the model"
                 for k, v in ckpt["model"].items() if k in model.state_dict() and v.shape != model.state_dict()[k].shape]
    if problems:
        raise CheckpointError(f"--resume {path}: does not fit {model.cfg.name}: {'; '.join(problems[:5])}")
