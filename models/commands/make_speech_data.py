"""``dszoo-make-speech-data``: a Speech Commands stand-in synthesised with eSpeak NG, offline.

    dszoo-make-speech-data --out data/speech                # 200 speakers x 35 words, about a minute
    dszoo-make-speech-data --out data/tiny --speakers 20 --words yes no up down
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional, Sequence

from .cli import ArgumentParser, UsageError, positive_int, run_cli

__all__ = ["cli", "main"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.make_data import OTHER_WORDS, generate_speech_data
    from ..audio.speech_commands import KEYWORDS

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (must not hold files yet)")
    p.add_argument("--speakers", type=positive_int, default=200, help="synthetic speakers (default %(default)s)")
    p.add_argument("--words", nargs="+", default=list(KEYWORDS + OTHER_WORDS),
                   help="words each speaker says (default: the 35 Speech Commands words)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--noise-seconds", type=positive_int, default=30, help="length of each background-noise file")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out}: exists and is not an empty folder; choose a new one")
    bad = [w for w in args.words if not w.isalpha() or not w.islower()]
    if bad:
        raise UsageError(f"--words: {', '.join(map(repr, bad))}: each must be a lower-case word (letters only)")
    from tqdm import tqdm

    with tqdm(total=args.speakers * len(args.words), unit="clip", disable=args.quiet or None) as bar:
        made = generate_speech_data(out, speakers_count=args.speakers, words=args.words, seed=args.seed,
                                    noise_seconds=args.noise_seconds, progress=bar.update)
    split = ", ".join(f"{len(v)} {k}" for k, v in made.speakers_by_split.items())
    print(f"wrote {made.clips:,} clips of {len(args.words)} words by {args.speakers} speakers ({split}) and "
          f"background noise to {out} in {made.seconds:.0f} s")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
