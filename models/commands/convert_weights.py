"""Convert a timm checkpoint (mobilenetv1_100, legacy_xception) into a dszoo safetensors file.

    python scripts/convert_weights.py mobilenetv1_100.pth mobilenet_v1.safetensors --model mobilenet_v1
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from ..registry import create_model
from ..weights import load_pretrained, save_state_dict
from .cli import ArgumentParser, new_output_file, non_negative_int, run_cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="timm checkpoint: .pth, .pth.tar or .safetensors")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--model", required=True, help="our model name, e.g. mobilenet_v1 or xception")
    p.add_argument("--num-classes", type=non_negative_int, help="default: the model's")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = p.parse_args(argv)
    new_output_file(args.dst, args.overwrite, "DST", (".safetensors",))
    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    model = create_model(args.model, **overrides)
    report = load_pretrained(model, args.src)
    save_state_dict(model, args.dst)
    note = ", head freshly initialised" if report["head_reset"] else ""
    print(f"{args.src} ({report['source']}) -> {args.dst} ({args.model}{note})")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
