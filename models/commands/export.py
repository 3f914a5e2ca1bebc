"""Export a dszoo model to TorchScript, ONNX or torch.export (.pt2), verified against eager.

    python scripts/export.py --model mobilenet_v1 --format onnx --out mobilenet_v1.onnx
    python scripts/export.py --model xception --pretrained xception.safetensors --format pt2 --out x.pt2
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from .. import create_model
from .cli import ArgumentParser, UsageError, new_output_file, non_negative_int, positive_int, run_cli
from ..deployment.export import EXPORT_FORMATS, EXPORT_SUFFIXES, ExportError, export_model
from ..plan import check_model_size, plan_model


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="registered name or config.yaml")
    p.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS))
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--pretrained", help="checkpoint to load first (ours or timm's)")
    p.add_argument("--num-classes", type=non_negative_int)
    p.add_argument("--input-size", nargs=3, type=positive_int, metavar=("C", "H", "W"), help="default: the model's")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--no-fold-bn", action="store_true", help="keep BatchNorm layers (default: folded into convs)")
    p.add_argument("--allow-large", action="store_true", help="build models above the size guard (models.plan)")
    args = p.parse_args(argv)
    new_output_file(args.out, args.overwrite, "--out", EXPORT_SUFFIXES[args.format])
    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    model = create_model(args.model, pretrained=args.pretrained, allow_large=args.allow_large, **overrides)
    size = tuple(args.input_size) if args.input_size else model.cfg.input_size
    model.check_input(torch.empty(1, *size, device="meta"))  # a wrong --input-size fails before any file
    if not args.allow_large:
        check_model_size(plan_model(model.cfg, size))
    try:
        check = export_model(model, args.format, args.out, size, fold_bn=not args.no_fold_bn)
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    print(f"wrote {args.out} ({args.format}, input {'x'.join(map(str, size))}, dynamic batch); {check}")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
