"""``dszoo-make-speech-data``: a Speech Commands stand-in synthesised offline, with every speech
engine installed (eSpeak NG from pip always; Pico, Flite, Festival, SAM and DECtalk where they are).

    dszoo-make-speech-data --out data/speech                # 200 eSpeak NG speakers + every other engine's voices
    dszoo-make-speech-data --out data/tiny --speakers 20 --words yes no up down --engines espeak
    dszoo-make-speech-data --out data/respelled --respell   # each keyword also in three other spellings
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Optional, Sequence

from .cli import ArgumentParser, UsageError, non_negative_int, positive_int, run_cli

__all__ = ["cli", "main"]


def _replace_interrupted(out: Path) -> None:
    """Empty a dataset whose generation was interrupted (it holds the generator's marker),
    provided it holds nothing but what the generator writes; the folder and its lock stay."""
    from ..audio.make_data import GENERATING, MANIFEST
    from ..training.run_files import LOCK_FILE

    foreign = [p for p in out.rglob("*") if not (p.name in (GENERATING, MANIFEST, LOCK_FILE) or p.is_dir() or
                                                  (p.suffix == ".wav" and p.parent.parent == out) or
                                                  (p.name.startswith(".") and p.name.endswith(".tmp")))]
    if foreign:
        raise UsageError(f"--out {out}: an interrupted dataset, but it also holds {foreign[0]}; "
                         "remove that or choose a new folder")
    for entry in out.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.name != LOCK_FILE:
            entry.unlink()


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.engines import ENGINES, find_engines, why_missing
    from ..audio.make_data import MAX_NOISE_SECONDS, OTHER_WORDS, max_speakers
    from ..audio.speech_commands import KEYWORDS
    from ..training.run_files import acquire_run_lock, release_run_lock

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder to create (must not hold files yet, unless it is an "
                                                "interrupted dataset, which is replaced)")
    p.add_argument("--speakers", type=positive_int, default=200, help="eSpeak NG speakers (default %(default)s; "
                   "Kokoro draws a quarter as many blends of its voices); the other engines add each of their voices "
                   "at 3 speeds x 3 pitches (Kokoro's at its own)")
    p.add_argument("--words", nargs="+", default=list(KEYWORDS + OTHER_WORDS),
                   help="words each speaker says (default: the 35 Speech Commands words)")
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=None,
                   help="speech engines to use (default: every one installed)")
    p.add_argument("--respell", action="store_true", help="each voice also says every keyword in three other "
                   "spellings (accents, for training only: they are never scored)")
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--noise-seconds", type=positive_int, default=30,
                   help=f"length of each background-noise file (at most {MAX_NOISE_SECONDS})")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = Path(args.out)
    bad = [w for w in args.words if not w.isalpha() or not w.islower()]
    if bad:
        raise UsageError(f"--words: {', '.join(map(repr, bad))}: each must be a lower-case word (letters only)")
    twice = sorted({w for w in args.words if args.words.count(w) > 1})
    if twice:
        raise UsageError(f"--words: {', '.join(map(repr, twice))} given more than once; each word is a folder")
    if args.noise_seconds > MAX_NOISE_SECONDS:
        raise UsageError(f"--noise-seconds {args.noise_seconds}: at most {MAX_NOISE_SECONDS} (ten minutes of each noise)")
    if args.speakers > max_speakers():
        raise UsageError(f"--speakers {args.speakers}: eSpeak NG's pool holds {max_speakers():,} distinct speakers")
    found, missing = find_engines(args.engines)
    if not found:
        raise UsageError(f"--engines {' '.join(e.name for e in missing)}: none can speak here "
                         f"({why_missing(missing)})")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not an empty folder; choose a new one")
    # one generator a folder: a second one started on it is refused, as a second training run is
    lock = acquire_run_lock(out, kind="dszoo-make-speech-data", option="--out")
    try:
        return _generate(args, out, found, missing)
    finally:
        release_run_lock(lock)


def _generate(args: argparse.Namespace, out: Path, found: list, missing: list) -> int:
    """Check ``out`` (locked by this process), then write the dataset into it."""
    from ..audio.make_data import generate_speech_data, interrupted_dataset, plan_speakers, spoken_texts
    from ..training.run_files import LOCK_FILE

    if any(p.name != LOCK_FILE for p in out.iterdir()):
        if not interrupted_dataset(out):
            raise UsageError(f"--out {out}: exists and is not an empty folder; choose a new one")
        print(f"note: {out} is a dataset whose generation was interrupted; replacing it")
        _replace_interrupted(out)
    for engine in missing:
        print(f"note: speech engine {engine.name} {engine.missing()}")
    plans = plan_speakers([e.name for e in found], args.speakers, args.seed)
    total = sum(len(plan.settings) for plan in plans) * len(spoken_texts(args.words, args.respell))
    from tqdm import tqdm

    with tqdm(total=total, unit="clip", disable=args.quiet or None) as bar:
        made = generate_speech_data(out, speakers_count=args.speakers, words=args.words, seed=args.seed,
                                    noise_seconds=args.noise_seconds, engines=[e.name for e in found],
                                    respell=args.respell, progress=bar.update)
    for (engine, voice), texts in made.unsaid.items():
        words = ", ".join(repr(t) for t in dict.fromkeys(texts))
        print(f"note: {engine} voice {voice} could not say {words}: {len(texts)} clip(s) left out")
    for (engine, voice), texts in made.dropped.items():
        print(f"note: {engine} voice {voice}: {len(texts)} clip(s) left out as not the word said once: {'; '.join(texts)}")
    if made.dropped:
        dropped = sum(map(len, made.dropped.values()))
        print(f"note: {dropped} clip(s) left out in all by the clip check ({dropped / (made.clips + dropped):.1%})")
    split = ", ".join(f"{len(v)} {k}" for k, v in made.speakers_by_split.items())
    engines = ", ".join(f"{name} {clips:,}" for name, clips in made.clips_by_engine.items())
    print(f"wrote {made.clips:,} clips ({engines}) of {len(args.words)} words by {len(plans)} speakers ({split}) "
          f"and background noise to {out} in {made.seconds:.0f} s")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
