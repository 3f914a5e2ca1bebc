"""Convert a timm checkpoint (mobilenetv1_100, legacy_xception) into a dszoo safetensors file.

    python scripts/convert_weights.py mobilenetv1_100.pth mobilenet_v1.safetensors --model mobilenet_v1
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from ..registry import create_model
from ..weights import load_pretrained, save_state_dict
from .cli import ArgumentParser, UsageError, new_output_file, non_negative_int, run_cli


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", help="timm checkpoint: .pth, .pth.tar or .safetensors")
    p.add_argument("dst", help="output .safetensors file")
    p.add_argument("--model", required=True, help="our model name, e.g. mobilenet_v1 or xception")
    p.add_argument("--num-classes", type=non_negative_int, help="default: the model's")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    args = p.parse_args(argv)
    new_output_file(args.dst, args.overwrite, "DST", (".safetensors",))
    _refuse_what_would_lose_its_metadata(args.src)
    overrides = {"num_classes": args.num_classes} if args.num_classes is not None else {}
    model = create_model(args.model, **overrides)
    report = load_pretrained(model, args.src)
    save_state_dict(model, args.dst)
    note = ", head freshly initialised" if report["head_reset"] else ""
    print(f"{args.src} ({report['source']}) -> {args.dst} ({args.model}{note})")
    return 0


def _refuse_what_would_lose_its_metadata(src: str) -> None:
    """A dszoo file that says what its input and outputs are (a keyword spotter file, a
    ``dszoo-train`` checkpoint) is used as it is: a plain weights file would drop its front end,
    class names and threshold."""
    from ..checkpoints import read_training_checkpoint
    from ..weights import spotter_metadata

    if not Path(src).is_file():
        return  # load_pretrained says what is wrong with it
    if src.endswith(".safetensors") and spotter_metadata(src) is not None:
        raise UsageError(f"{src}: a keyword spotter file, already dszoo's, whose front end, class names and threshold "
                         "a converted file would drop; use it as it is (dszoo-spot, create_model(pretrained=...))")
    if read_training_checkpoint(src, "SRC") is not None:
        raise UsageError(f"{src}: a dszoo-train checkpoint, already dszoo's, whose classes and input a converted file "
                         "would drop; use it as it is (--pretrained, dszoo-export --pretrained)")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
