"""Export a dszoo model to TorchScript, torch.export (.pt2), ONNX Runtime (.onnx), ExecuTorch (.pte,
XNNPACK) or OpenVINO (.xml and .bin), checked by running the file in its own runtime; in int8
(pt2, onnx, pte, openvino: each runtime's own quantizer), calibrated on a dataset and checked
against fp32 on examples held out of calibration.

    python scripts/export.py --model mobilenet_v1 --format onnx --out mobilenet_v1.onnx
    python scripts/export.py --model xception --pretrained xception.safetensors --format pt2 --out x.pt2
    python scripts/export.py --model ds_cnn_s --format pte --out kws.pte     # pip install 'dszoo[executorch]'
    python scripts/export.py --model ds_cnn_s --format openvino --out kws.xml  # pip install 'dszoo[openvino]'
    python scripts/export.py --pretrained runs/train/best.pt --precision int8 --calibration digits \
        --format onnx --out digits_int8.onnx     # a dszoo-train checkpoint names its model and input size
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional, Sequence

from torch import nn

from ..registry import create_model
from .cli import ArgumentParser, UsageError, new_output_file, non_negative_int, positive_int, run_cli
from ..deployment.export import EXPORT_FORMATS, EXPORT_PRECISIONS, EXPORT_SUFFIXES, ExportError, export_model
from ..deployment.quantize import CalibrationError
from ..audio.mfcc import trained_front_end
from ..training.data import DATASETS, build_datasets, calibration_examples
from ..files import remove_leftover_temporaries
from ..plan import check_model_size, plan_model
from ..training.run_files import read_training_checkpoint
from ..registry import model_from_checkpoint


STALE_SECONDS = 3600
"""A temporary export file of ours untouched this long was left by a killed export: removed."""


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered name or config.yaml (default with a dszoo-train checkpoint as "
                                    "--pretrained: the model it saved)")
    p.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--pretrained", help="checkpoint to load first (ours or timm's)")
    p.add_argument("--num-classes", type=non_negative_int)
    p.add_argument("--input-size", nargs=3, type=positive_int, metavar=("C", "H", "W"),
                   help="default: the model's (a dszoo-train checkpoint's: the size it trained at)")
    p.add_argument("--precision", default="fp32", choices=sorted(EXPORT_PRECISIONS),
                   help=f"int8: static quantization ({', '.join(EXPORT_PRECISIONS['int8'])}), needs --calibration")
    p.add_argument("--calibration", choices=DATASETS, help="int8: the dataset whose training images calibrate it")
    p.add_argument("--data-dir", help="--calibration's folder (imagefolder, cifar10, speech_commands)")
    p.add_argument("--calibration-images", type=positive_int, default=256,
                   help="int8: calibrate on this many training examples (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers (default: folded into convs)")
    p.add_argument("--allow-large", action="store_true", help="build models above the size guard (dszoo.plan)")
    args = p.parse_args(argv)
    _check_precision_options(args)
    new_output_file(args.out, args.overwrite, "--out", EXPORT_SUFFIXES[args.format])
    for companion in EXPORT_FORMATS[args.format].companions(Path(args.out)):  # OpenVINO's weights file
        if companion.exists() and not args.overwrite:
            raise UsageError(f"--out {args.out}: its {args.format} weights file {companion} exists; pass --overwrite "
                             "to replace it")
    problem = EXPORT_FORMATS[args.format].missing()
    if problem is not None:
        raise UsageError(f"--format {args.format} needs {problem}")
    overrides: dict[str, Any] = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    if args.input_size:
        overrides["input_size"] = tuple(args.input_size)
    saved = read_training_checkpoint(args.pretrained, "--pretrained") if args.pretrained else None
    if saved is not None:  # the checkpoint carries its model, classes and input size
        model = checkpoint_model(saved, args)
    elif args.model is None:
        raise UsageError("--model is required (or --pretrained CHECKPOINT, a dszoo-train checkpoint, which names its "
                         "model)")
    else:
        model = create_model(args.model, pretrained=args.pretrained, allow_large=args.allow_large, **overrides)
    size = tuple(args.input_size or model.cfg.input_size)
    if not args.allow_large:
        check_model_size(plan_model(model.cfg, size))
    calibration = None
    if args.precision == "int8":
        pretrained_cfg = dict(model.pretrained_cfg, input_size=size)
        trained_on = trained_front_end(saved or {"mfcc_preset": model.pretrained_cfg.get("mfcc")}, args.pretrained)
        data = build_datasets(args.calibration, pretrained_cfg, data_dir=args.data_dir, num_classes=model.num_classes,
                              mfcc=trained_on, flag="--calibration")
        calibration = calibration_examples(data.train, args.calibration_images)
    out = Path(args.out)
    written = (out.name, *(c.name for c in EXPORT_FORMATS[args.format].companions(out)))
    for stale in remove_leftover_temporaries(out.parent, written, older_than=STALE_SECONDS):
        print(f"note: removed {stale}, left by an export that was killed")
    try:
        check = export_model(model, args.format, args.out, size, fold_bn=not args.no_fold_bn, precision=args.precision,
                             calibration=calibration, overwrite=args.overwrite)
    except (ExportError, CalibrationError) as exc:
        raise UsageError(str(exc)) from None
    except FileExistsError:
        raise UsageError(f"--out {args.out}: a file appeared there while exporting; it was kept and nothing was written "
                         "(pass --overwrite to replace it)") from None
    calibrated = (f", calibrated on {sum(len(x) for x in calibration)} {args.calibration} training examples"
                  if calibration else "")
    print(f"wrote {args.out} ({args.precision} {args.format}, input {'x'.join(map(str, size))}, dynamic batch"
          f"{calibrated}); {check}")
    for note in check.notes:
        print(f"note: {note}")
    return 0


def checkpoint_model(saved: dict[str, Any], args: argparse.Namespace) -> nn.Module:
    """The model a dszoo-train checkpoint saved; options that contradict it are refused, and int8
    is calibrated only on the dataset it was trained on."""
    source = f"--pretrained {args.pretrained}"
    model, notes = model_from_checkpoint(saved, source)
    if args.model is not None and args.model != model.cfg.name:
        raise UsageError(f"{source} holds {model.cfg.name}, not --model {args.model}; drop --model")
    if args.num_classes is not None and args.num_classes != model.num_classes:
        raise UsageError(f"{source} has {model.num_classes} classes, not --num-classes {args.num_classes}")
    trained_on = saved["config"].get("dataset")
    if args.calibration is not None and trained_on and args.calibration != trained_on:
        raise UsageError(f"--calibration {args.calibration}: {source} was trained on {trained_on}; calibrate int8 on "
                         f"that data (--calibration {trained_on}), or its scales will not fit what it sees")
    for note in notes:
        print(f"note: {note}")
    return model


def _check_precision_options(args: argparse.Namespace) -> None:
    """int8 needs --calibration and a format that holds it; fp32 takes no calibration options."""
    if args.precision == "int8":
        if args.calibration is None:
            raise UsageError(f"--precision int8 needs --calibration DATASET ({', '.join(DATASETS)}): the training "
                             "images whose activation ranges set the int8 scales")
        if args.format not in EXPORT_PRECISIONS["int8"]:
            raise UsageError(f"--precision int8 exports as {' or '.join(EXPORT_PRECISIONS['int8'])}, not "
                             f"--format {args.format}")
    elif args.calibration is not None or args.data_dir is not None:
        raise UsageError("--calibration and --data-dir calibrate int8 exports; add --precision int8")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
