"""``dszoo-eval-speech``: a keyword model scored on every clip of a Speech Commands-layout folder,
with rows per speech engine and voice where the folder's manifest names them; or, on a folder
of ``dszoo-make-recordings``, as a spotter: keywords found and false alarms per minute at each
threshold, the operating point for a false-alarm rate, and the spotter saved with it.

    dszoo-eval-speech runs/kws/best.pt data/speech                       # every clip
    dszoo-eval-speech runs/kws/best.pt data/speech --engines flite --snr 10 --voices
    dszoo-eval-speech runs/kws/best.pt data/no_keywords --max-false-alarms-per-minute 0.5 --save-spotter kws.safetensors
    dszoo-eval-speech runs/kws/best.pt data/an_hour --max-false-alarms-per-hour 10 --save-spotter kws.safetensors
    dszoo-eval-speech ... --save-spotter kws.safetensors --loeo runs/loeo/loeo.json   # its card gives them
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional, Sequence

from .cli import ArgumentParser, UsageError, finite_float, new_output_file, positive_float, run_cli

__all__ = ["cli", "main"]


def _row(name: str, group) -> str:  # noqa: ANN001 - evaluate.GroupScore
    from ..audio.evaluate import percent

    return (f"{name:<34} {percent(group.keyword_top1):>8} of {group.keyword_clips:<6,} "
            f"{percent(group.unknown_rejected):>8} of {group.unknown_clips:<6,} {percent(group.false_keyword_rate):>7} "
            f"{percent(group.keyword_top1_among_keywords):>8}")


def _card(spotter, checkpoint: str, loeo: Optional[dict]) -> dict:  # noqa: ANN001 - spot.KeywordSpotter
    """What a saved spotter says it is: the ``dszoo-train`` recipe of a checkpoint and what its
    training folder held (or a saved spotter's card, kept), the file it came from, and the
    leave-one-engine-out results; names, not this machine's paths."""
    from ..audio.make_data import describe_manifest
    from .train import recipe

    card = {k: v for k, v in spotter.card.items() if k != "training"}
    training = spotter.card.get("training")
    if training:
        card["recipe"] = recipe(training)
        card["data"] = describe_manifest(Path(training["data_dir"])) if training.get("data_dir") else None
    card["from"] = Path(checkpoint).name
    if loeo is not None:
        card["leave_one_engine_out"] = loeo
    return card


def _recordings(args: argparse.Namespace, spotter, out: Optional[Path]) -> int:  # noqa: ANN001
    """Score a folder of recordings at every threshold, and choose and save an operating point."""
    from ..audio.recordings import THRESHOLDS, choose_threshold, score_recordings
    from ..audio.spot import save_spotter
    from .leave_one_engine_out import merge_results

    if args.max_false_alarms_per_hour:
        limit, stated = args.max_false_alarms_per_hour / 60, f"{args.max_false_alarms_per_hour:g} per hour"
    elif args.max_false_alarms_per_minute:
        limit, stated = args.max_false_alarms_per_minute, f"{args.max_false_alarms_per_minute:g} per minute"
    else:
        limit, stated = None, ""
    if args.save_spotter and limit is None:
        raise UsageError("--save-spotter needs --max-false-alarms-per-minute or --max-false-alarms-per-hour (the "
                         "operating point it saves)")
    if args.loeo and not args.save_spotter:
        raise UsageError("--loeo goes into the card of --save-spotter; add --save-spotter FILE")
    loeo = merge_results(args.loeo) if args.loeo else None  # a bad file refused before the recordings are scored
    save = new_output_file(args.save_spotter, False, "--save-spotter", (".safetensors",)) if args.save_spotter else None
    own = spotter.threshold if args.threshold is None else args.threshold
    if not 0 < own < 1:
        raise UsageError(f"--threshold {own}: must be between 0 and 1")
    scores = score_recordings(spotter, Path(args.data_dir), sorted(set(THRESHOLDS) | {round(own, 4)}))
    print(f"{args.checkpoint} on the recordings of {args.data_dir} ({scores[0].minutes:.1f} min outside keywords, "
          f"{scores[0].keywords} keywords):")
    print(f"{'threshold':>9} {'found':>16} {'false alarms':>13} {'per minute':>10} {'per hour':>9}")
    chosen = choose_threshold(scores, limit, stated) if limit is not None else None
    for sc in scores:
        mark = " <- the model's" if sc.threshold == round(own, 4) else (" <- chosen" if sc is chosen else "")
        if sc.threshold in (0.5, 0.6, 0.7, 0.8, 0.9, 0.95) or mark:
            found = f"{sc.hit_rate:>7.2f}% ({sc.hits:>4})" if sc.keywords else f"{'-':>16}"  # no keywords to find
            rates = f"{sc.false_alarms_per_minute:>10.3f} {60 * sc.false_alarms_per_minute:>9.1f}" if sc.minutes \
                else f"{'-':>10} {'-':>9}"  # all keywords
            print(f"{sc.threshold:>9.2f} {found} {sc.false_alarms:>13} {rates}{mark}")
    if chosen is not None:
        print(f"operating point for at most {stated.replace(' per', ' false alarms per')}: threshold "
              f"{chosen.threshold:.2f} ({chosen.false_alarms_per_minute:.3f} per minute, "
              f"{60 * chosen.false_alarms_per_minute:.1f} per hour here)")
    if save is not None and chosen is not None:
        spotter.threshold = chosen.threshold
        save_spotter(spotter, save, {**_card(spotter, args.checkpoint, loeo), "operating_point": {
            "chosen_on": Path(args.data_dir).name, "max_false_alarms_per_minute": limit,
            **({"max_false_alarms_per_hour": args.max_false_alarms_per_hour} if args.max_false_alarms_per_hour else {}),
            **chosen.as_dict()}})
        print(f"wrote {save} (threshold {chosen.threshold:.2f})")
    if out is not None:
        from ..files import atomic_path

        with atomic_path(out) as tmp:
            Path(tmp).write_text(json.dumps({"thresholds": [sc.as_dict() for sc in scores],
                                             "chosen": chosen.as_dict() if chosen else None}, indent=1,
                                            allow_nan=False) + "\n")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.evaluate import score_folder
    from ..audio.spot import load_spotter

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a dszoo-train checkpoint of a speech_commands run")
    p.add_argument("data_dir", help="a folder of <word>/<name>.wav clips (every clip is scored)")
    p.add_argument("--engines", nargs="+", help="score only the clips of these speech engines (from manifest.csv)")
    p.add_argument("--split", choices=("training", "validation", "testing"), help="score only the clips of this "
                   "split's speakers (the dataset's file-name rule: testing, the voices a model of it never heard)")
    p.add_argument("--snr", type=finite_float, help="add the folder's background noise at this SNR in dB")
    p.add_argument("--voices", action="store_true", help="a row per voice too")
    p.add_argument("--confusion", action="store_true", help="the predicted classes of each spoken word")
    p.add_argument("--json", help="write every figure to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--threshold", type=finite_float, help="recordings: report at this threshold (default: the model's)")
    bound = p.add_mutually_exclusive_group()
    bound.add_argument("--max-false-alarms-per-minute", type=positive_float,
                       help="recordings: choose the lowest threshold with at most this many false alarms per minute")
    bound.add_argument("--max-false-alarms-per-hour", type=positive_float,
                       help="recordings: the same bound per hour (an hour of keyword-free speech and noise: "
                       "dszoo-make-recordings --no-keywords --seconds 3600)")
    p.add_argument("--save-spotter", help="recordings: write the model with the chosen threshold to this new "
                                          ".safetensors file (dszoo-spot reads it)")
    p.add_argument("--loeo", nargs="+", help="with --save-spotter: the loeo.json of the recipe's "
                   "dszoo-leave-one-engine-out run (or runs, each holding out other engines) for the spotter's card")
    args = p.parse_args(argv)
    out = new_output_file(args.json, args.overwrite, "--json", (".json",)) if args.json else None
    spotter = load_spotter(args.checkpoint)
    for note in spotter.notes:
        print(f"note: {note}")
    from ..audio.recordings import RECORDINGS

    if (Path(args.data_dir) / RECORDINGS).is_file():
        return _recordings(args, spotter, out)
    if args.max_false_alarms_per_minute or args.max_false_alarms_per_hour or args.save_spotter \
            or args.threshold is not None or args.loeo:
        raise UsageError(f"--threshold, --max-false-alarms-per-minute/-hour, --save-spotter and --loeo score recordings; "
                         f"{args.data_dir} holds clips (no {RECORDINGS}: make recordings with dszoo-make-recordings)")
    score = score_folder(spotter, Path(args.data_dir), args.engines, args.snr, split=args.split)
    noise = f" at {args.snr:g} dB SNR" if args.snr is not None else ""
    print(f"{args.checkpoint} on {args.data_dir}{f' ({args.split} split)' if args.split else ''}{noise}:")
    print(f"{'clips':<34} {'keywords right':>18} {'unknown called unknown':>24} {'keyword for unknown':>6} "
          f"{'keywords right, unknown aside':>6}")
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
            Path(tmp).write_text(json.dumps(score.as_dict(), indent=1, allow_nan=False) + "\n")
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
