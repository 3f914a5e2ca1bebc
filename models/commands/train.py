"""``dszoo-train`` / ``scripts/train.py``: fine-tune a dszoo model (the loop is ``dszoo.training``).

    dszoo-train                                  # mobilenet_v1_025 on bundled digits
    dszoo-train --model xception --pretrained x.safetensors --dataset imagefolder --data-dir DIR
    torchrun --nproc_per_node=2 scripts/train.py --epochs 5  # DistributedDataParallel
"""
from __future__ import annotations

import argparse
import shlex
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch.distributed as dist

from ..audio.mfcc import MFCC_PRESETS
from ..training import DATASETS, TrainConfig, train
from ..training.data import IMAGE_AUGMENT
from .cli import (ArgumentParser, fraction, non_negative_float, non_negative_int, positive_float, positive_int,
                  probability, run_cli)

__all__ = ["build_parser", "cli", "main", "recipe"]


def build_parser() -> ArgumentParser:
    """The options of ``dszoo-train``, one per ``TrainConfig`` field."""
    d = TrainConfig()
    p = ArgumentParser(description="Fine-tune a dszoo model. With no arguments: mobilenet_v1_025 on "
                       "scikit-learn's bundled digits, a few minutes on a laptop CPU.")
    a = p.add_argument
    a("--model", default=d.model, help="registered name or config.yaml (default %(default)s)")
    a("--num-classes", type=positive_int, help="must agree with the dataset (default: the dataset's)")
    a("--in-chans", type=positive_int, help="input channels (default: 1 for digits, else the model's)")
    a("--img-size", type=positive_int, help="input side (default: 32 for digits, else the model's)")
    a("--pretrained", help="our checkpoint or a timm state dict (.pth/.safetensors)")
    a("--freeze", default=d.freeze, help="none | backbone | stages:K (stem + first K stages)")
    a("--dataset", default=d.dataset, choices=DATASETS)
    a("--speech-task", default=d.speech_task, choices=("12", "all"),
      help="speech_commands: 12 (silence, unknown, ten keywords) or all (every word a class)")
    a("--augment", default=d.augment, help="speech_commands: a preset (none, basic, voices) or levers joined by "
      "commas, e.g. voices,-reverb (default %(default)s; see docs/keyword_spotting.md)")
    a("--image-augment", default=d.image_augment, choices=tuple(IMAGE_AUGMENT),
      help="image datasets: none (resize and centre crop), light (crops of >= half the image, flips) or imagenet "
      "(timm's ImageNet recipe; default)")
    a("--scale", type=probability, nargs=2, metavar=("MIN", "MAX"), help="image datasets: the random-resized crop's "
      "share of the image (default: the preset's, 0.08 1 for imagenet)")
    a("--hflip", type=probability, help="image datasets: horizontal flip probability (default: the preset's, 0.5)")
    a("--mfcc", default=d.mfcc, choices=tuple(MFCC_PRESETS),
      help="speech_commands: the MFCC front end (default %(default)s; --eval-only takes the checkpoint's)")
    a("--hold-out-engine", help="speech_commands from dszoo-make-speech-data: test on every clip of this speech "
      "engine, train on the others")
    a("--unknown-ratio", type=non_negative_float, default=d.unknown_ratio, help="speech_commands, 12-class task: "
      "non-keyword clips per keyword clip in the training split (default %(default)s: 10%% of it, as the references)")
    a("--data-dir", help="for imagefolder (train/ and val/ inside), cifar10 (local files) and speech_commands")
    a("--classes", type=_class_list, help="digits only: e.g. 0,1,2,3,4")
    a("--fake-size", type=positive_int, default=d.fake_size, help="images in --dataset fake")
    a("--epochs", type=positive_int, help="default 15 (on --resume: the saved run's)")
    a("--batch-size", type=positive_int, default=d.batch_size, help="per process")
    a("--opt", default=d.opt, help="any timm optimizer name (default %(default)s)")
    a("--lr", type=positive_float, default=d.lr, help="backbone learning rate")
    a("--lr-head", type=positive_float, help="classifier learning rate (default: --lr)")
    a("--weight-decay", type=non_negative_float, default=d.weight_decay)
    a("--warmup-epochs", type=non_negative_int, default=d.warmup_epochs)
    a("--label-smoothing", type=fraction, default=d.label_smoothing)
    a("--mixup", type=non_negative_float, default=d.mixup, metavar="ALPHA",
      help="mixup (Zhang et al. 2018): each batch mixed with itself reversed, weight ~ Beta(ALPHA, ALPHA), "
      "targets alike (timm's Mixup); 0: off (default)")
    a("--clip-grad", type=non_negative_float, default=d.clip_grad, help="max gradient norm (0: off)")
    a("--drop-rate", type=fraction, help="classifier dropout (default: the model's)")
    a("--ema", action="store_true", help="keep an EMA of the weights (timm ModelEmaV3) and evaluate it")
    a("--ema-decay", type=fraction, default=d.ema_decay)
    a("--precise-bn", action="store_true", help="recompute BatchNorm's running statistics over the training data "
      "before each validation (torch's update_bn): for short runs and small datasets, whose statistics lag the weights")
    a("--no-ema-warmup", dest="ema_warmup", action="store_false",
      help="average with --ema-decay from the first step (default: timm's warm-up, the decay growing towards it)")
    a("--amp", action="store_true", help="torch.autocast: bfloat16 on CPU and on GPUs that have it, else float16 "
      "with a GradScaler")
    a("--compile", action="store_true", help="torch.compile the training model (dynamic=False)")
    a("--qat", action="store_true", help="quantization-aware training (fake int8 in every step; start from "
      "--pretrained): the run also writes int8.pt2 from best.pt")
    a("--channels-last", action=argparse.BooleanOptionalAction, default=None,
      help="channels-last memory format (default: on; training steps measured 1.2-1.5x faster on a CPU, "
      "2.4-2.7x with bf16 on a GPU)")
    a("--seed", type=non_negative_int, default=d.seed, help="draws the initial weights, the batches and, for speech, "
      "the unknown-word subsets, silence clips and augmentation (default %(default)s)")
    a("--deterministic", action="store_true", help="deterministic algorithms: exact resumes")
    a("--workers", type=non_negative_int, default=d.workers, help="DataLoader worker processes")
    a("--out-dir", help="default: runs/train, or runs/train2, train3 ... if taken (never reuses a run)")
    a("--resume", help="OUT/last.pt: continue that run")
    a("--overwrite", action="store_true", help="replace the run files in --out-dir")
    a("--eval-only", action="store_true", help="evaluate --pretrained on the validation set")
    a("--precision", default=d.precision, choices=("fp32", "bf16", "int8"),
      help="with --eval-only: also evaluate the model in this precision (int8: calibrated on training images)")
    a("--calibration-images", type=positive_int, default=d.calibration_images,
      help="training examples int8 calibrates on (default %(default)s)")
    a("--max-batches", type=positive_int, help="train on at most this many batches per epoch (smoke tests)")
    a("-q", "--quiet", action="count", default=0, help="-q: no progress bars; -qq: no epoch lines or notes either "
      "(errors are always printed)")
    a("--allow-large", action="store_true", help="build models above the size guard (dszoo.plan)")
    return p


_NOT_RECIPE = ("out_dir", "resume", "overwrite", "quiet")  # where a run goes and what it prints, not what it learns
_FOLDERS = ("data_dir", "pretrained")


def recipe(options: Mapping[str, object]) -> str:
    """The ``dszoo-train`` command line that trains as ``options`` (a checkpoint's ``config``)
    did: the options that differ from the defaults, files and folders by their name (a card
    travels; where they lay on the trainer's machine means nothing elsewhere)."""
    words = ["dszoo-train"]
    for action in build_parser()._actions:
        value = options.get(action.dest)
        if action.dest in _NOT_RECIPE or not action.option_strings or value is None or value == action.default:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if isinstance(value, bool):  # store_true, or --channels-last / --no-channels-last
            words.append(flag if value else f"--no-{flag[2:]}")
        elif isinstance(value, (list, tuple)):
            words += [flag, ",".join(map(str, value))]
        else:
            words += [flag, Path(str(value)).name if action.dest in _FOLDERS else str(value)]
    return shlex.join(words)


def _class_list(text: str) -> list[int]:
    """argparse type of ``--classes``: distinct non-negative ints, comma-separated."""
    parts = text.split(",")
    if not all(p.strip().isdigit() for p in parts) or len(set(map(int, parts))) != len(parts):
        raise argparse.ArgumentTypeError(f"must be distinct class numbers separated by commas (e.g. 0,1,2), got {text!r}")
    return [int(p) for p in parts]


def _given_options(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]) -> tuple[str, ...]:
    """The options ``argv`` names, whatever their values (a default given explicitly counts): the
    parse again with every default suppressed, so only what was given lands in the namespace."""
    import copy

    bare = copy.deepcopy(parser)
    for action in bare._actions:
        action.default = argparse.SUPPRESS
    return tuple(sorted(vars(bare.parse_args(argv))))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` and train; errors propagate (``cli`` turns them into one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    cfg = TrainConfig(**vars(args), given=_given_options(parser, argv))
    try:
        train(cfg)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
