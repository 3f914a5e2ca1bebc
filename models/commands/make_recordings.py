"""``dszoo-make-recordings``: long recordings with keywords at known times, made from the held-out
speakers of a Speech Commands-layout folder, for measuring a spotter as it is used
(``dszoo-eval-speech CHECKPOINT RECORDINGS``).

    dszoo-make-recordings --data-dir data/speech --out data/recordings                  # 5 x 60 s, test voices
    dszoo-make-recordings --data-dir data/speech --out data/no_keywords --no-keywords --split validation
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from .cli import ArgumentParser, UsageError, non_negative_int, positive_float, positive_int, run_cli

__all__ = ["cli", "main"]

MAX_SECONDS = 3600


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.recordings import make_recordings

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="a Speech Commands-layout folder (with _background_noise_)")
    p.add_argument("--out", required=True, help="a new (or empty) folder for the recordings")
    p.add_argument("--count", type=positive_int, default=5, help="recordings (default %(default)s)")
    p.add_argument("--seconds", type=positive_float, default=60.0, help=f"length of each (at most {MAX_SECONDS})")
    p.add_argument("--split", choices=("training", "validation", "testing"), default="testing",
                   help="whose voices speak (default %(default)s: speakers no model trained on)")
    p.add_argument("--engines", nargs="+", help="only the clips of these speech engines (from manifest.csv)")
    p.add_argument("--no-keywords", action="store_true", help="only non-keywords and noise: false alarms alone")
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)
    if args.seconds > MAX_SECONDS:
        raise UsageError(f"--seconds {args.seconds:g}: at most {MAX_SECONDS} (an hour a recording)")
    if args.count > 1000:
        raise UsageError(f"--count {args.count}: at most 1000 recordings")
    out = Path(args.out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty folder; choose a new folder")
    paths = make_recordings(Path(args.data_dir), out, count=args.count, seconds=args.seconds, split=args.split,
                            keywords=not args.no_keywords, engines=args.engines, seed=args.seed)
    print(f"wrote {len(paths)} recordings of {args.seconds:g} s from the {args.split} voices of {args.data_dir} to {out}")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
