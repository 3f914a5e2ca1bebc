"""``dszoo-eval-speech``: a keyword model scored on every clip of a Speech Commands-layout folder,
with rows per speech engine and voice where the folder's manifest names them.

    dszoo-eval-speech runs/kws/best.pt data/speech                       # every clip
    dszoo-eval-speech runs/kws/best.pt data/speech --engines flite --snr 10 --voices
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from .cli import ArgumentParser, new_output_file, run_cli

__all__ = ["cli", "main"]


def _row(name: str, group) -> str:  # noqa: ANN001 - evaluate.GroupScore
    return (f"{name:<34} {group.keyword_top1:7.2f}% of {group.keyword_clips:<6,} {group.unknown_rejected:7.2f}% "
            f"of {group.unknown_clips:<6,} {group.false_keyword_rate:6.2f}%")


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.evaluate import score_folder
    from ..audio.spot import load_spotter

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a dszoo-train checkpoint of a speech_commands run")
    p.add_argument("data_dir", help="a folder of <word>/<name>.wav clips (every clip is scored)")
    p.add_argument("--engines", nargs="+", help="score only the clips of these speech engines (from manifest.csv)")
    p.add_argument("--snr", type=float, help="add the folder's background noise at this SNR in dB")
    p.add_argument("--voices", action="store_true", help="a row per voice too")
    p.add_argument("--confusion", action="store_true", help="the predicted classes of each spoken word")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    args = p.parse_args(argv)
    out = new_output_file(args.json, args.overwrite, "--json", (".json",)) if args.json else None
    spotter = load_spotter(args.checkpoint)
    for note in spotter.notes:
        print(f"note: {note}")
    score = score_folder(spotter, Path(args.data_dir), args.engines, args.snr)
    noise = f" at {args.snr:g} dB SNR" if args.snr is not None else ""
    print(f"{args.checkpoint} on {args.data_dir}{noise}:")
    print(f"{'clips':<34} {'keywords right':>18} {'unknown called unknown':>24} {'keyword for unknown':>6}")
    print(_row("all", score.overall))
    for name, group in sorted(score.engines.items()):
        print(_row(f"engine {name}", group))
    for name, group in sorted(score.voices.items()) if args.voices else []:
        print(_row(f"voice {name}", group))
    if args.confusion:
        width = max(len(c) for c in score.classes)
        print(f"{'said/heard':<10} " + " ".join(f"{c:>{width}}" for c in score.classes))
        for word, counts in sorted(score.confusion.items()):
            print(f"{word:<10} " + " ".join(f"{n:>{width}}" for n in counts))
    if out is not None:
        from ..files import atomic_path

        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps(score.as_dict(), indent=1) + "\n")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
