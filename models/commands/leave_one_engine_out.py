"""``dszoo-leave-one-engine-out``: how well a keyword recipe hears speech engines it never heard.
For each engine of a generated dataset: train on all the others (``dszoo-train --hold-out-engine``),
then score the final epoch's model on every clip of the held-out engine, clean and with noise.
Options it does not know are passed to ``dszoo-train``.

    dszoo-leave-one-engine-out --data-dir data/speech --out-dir runs/loeo --model ds_cnn_s --epochs 60 --augment voices
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

from .cli import ArgumentParser, UsageError, finite_float, run_cli

__all__ = ["cli", "main"]

if TYPE_CHECKING:
    from ..audio.evaluate import GroupScore


def _table(rows: list[tuple[str, GroupScore, GroupScore]], snr: float) -> str:
    from ..audio.evaluate import percent

    lines = [f"| held-out engine | keywords right | unknown called unknown | keyword for unknown | keywords at {snr:g} dB "
             "| keywords right, unknown aside |", "|---|---|---|---|---|---|"]
    for engine, clean, noisy in rows:
        lines.append(f"| {engine} | {percent(clean.keyword_top1)} of {clean.keyword_clips:,} | "
                     f"{percent(clean.unknown_rejected)} of {clean.unknown_clips:,} | "
                     f"{percent(clean.false_keyword_rate)} | {percent(noisy.keyword_top1)} | "
                     f"{percent(clean.keyword_top1_among_keywords)} |")
    return "\n".join(lines)


def merge_results(paths: Sequence[Path]) -> dict:
    """The ``loeo.json`` of one run, or of several that held out different engines with the same
    options (run side by side with ``--engines``), as one: every engine's row, pooled again from
    the counts. Paths become folder names: the summary is meant to travel (a spotter's card)."""
    from ..audio.evaluate import GroupScore
    from ..files import regular_file

    merged: Optional[dict] = None
    for path in paths:
        text = regular_file(path, "--loeo", max_bytes=10_000_000).read_text()
        try:
            run = json.loads(text)
            same = {"data_dir": Path(run["data_dir"]).name, "train_args": run["train_args"], "snr_db": run["snr_db"]}
            rows = {r["engine"]: {"clean": GroupScore.from_dict(r["clean"]), "noisy": GroupScore.from_dict(r["noisy"])}
                    for r in run["engines"]}
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, UsageError) as exc:
            raise UsageError(f"{path}: not a dszoo-leave-one-engine-out loeo.json ({exc})") from None
        if merged is None:
            merged = {**same, "engines": {}}
        elif any(merged[k] != v for k, v in same.items()):
            raise UsageError(f"{path}: another data folder, dszoo-train options or SNR than {paths[0]}; "
                             "only runs of one recipe on one folder pool")
        twice = sorted(set(rows) & set(merged["engines"]))
        if twice:
            raise UsageError(f"{path}: holds out {', '.join(twice)} again; each engine may come from one run only")
        merged["engines"].update(rows)
    if merged is None:
        raise UsageError("--loeo: no loeo.json given")
    pooled = {kind: sum((r[kind] for r in merged["engines"].values()), GroupScore()) for kind in ("clean", "noisy")}
    return {**merged, "engines": {e: {k: g.as_dict() for k, g in r.items()} for e, r in sorted(merged["engines"].items())},
            "pooled": {k: g.as_dict() for k, g in pooled.items()}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.evaluate import GroupScore, percent, score_folder
    from ..audio.make_data import read_manifest
    from ..audio.spot import load_spotter
    from ..files import atomic_path
    from ..training import TrainConfig, train
    from .train import build_parser

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="a dszoo-make-speech-data folder of two or more engines")
    p.add_argument("--out-dir", required=True, help="a new folder: one run per engine, loeo.json and loeo.md")
    p.add_argument("--engines", nargs="+", help="engines to hold out in turn (default: every one in the manifest)")
    p.add_argument("--snr", type=finite_float, default=10.0, help="SNR in dB of the noisy scoring (default %(default)s)")
    args, train_args = p.parse_known_args(argv)
    data, out = Path(args.data_dir), Path(args.out_dir)
    for flag in ("--dataset", "--data-dir", "--hold-out-engine", "--out-dir", "--resume", "--eval-only"):
        if any(a == flag or a.startswith(flag + "=") for a in train_args):
            raise UsageError(f"{flag}: set by dszoo-leave-one-engine-out itself; leave it out")
    engines = sorted({row["engine"] for row in read_manifest(data).values()}) if data.is_dir() else []
    if len(engines) < 2:
        raise UsageError(f"--data-dir {data}: needs a dszoo-make-speech-data folder with clips of two or more "
                         f"speech engines (it has {', '.join(engines) or 'no manifest.csv'})")
    held_out = args.engines or engines
    unknown = [e for e in held_out if e not in engines]
    if unknown:
        raise UsageError(f"--engines {' '.join(unknown)}: {data} holds clips of {', '.join(engines)}")
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"--out-dir {out}: exists and is not empty; choose a new folder")
    parser = build_parser()
    rows = []
    for engine in held_out:
        run = out / f"without_{engine}"
        cfg = TrainConfig(**vars(parser.parse_args([*train_args, "--dataset", "speech_commands", "--data-dir",
                                                    str(data), "--hold-out-engine", engine, "--out-dir", str(run)])))
        print(f"== holding out {engine}: training on {', '.join(e for e in engines if e != engine)}")
        train(cfg)
        spotter = load_spotter(run / "last.pt")
        clean = score_folder(spotter, data, [engine]).overall
        noisy = score_folder(spotter, data, [engine], snr_db=args.snr).overall
        rows.append((engine, clean, noisy))
        print(f"held-out {engine}: keywords {percent(clean.keyword_top1)}, unknown called unknown "
              f"{percent(clean.unknown_rejected)}, keywords at {args.snr:g} dB {percent(noisy.keyword_top1)}")
    pooled = ("pooled", sum((c for _, c, _ in rows), GroupScore()), sum((n for _, _, n in rows), GroupScore()))
    summary = {"data_dir": str(data), "train_args": list(train_args), "snr_db": args.snr,
               "engines": [{"engine": e, "checkpoint": str(out / f"without_{e}" / "last.pt"), "clean": c.as_dict(),
                            "noisy": n.as_dict()} for e, c, n in rows],
               "pooled": {"clean": pooled[1].as_dict(), "noisy": pooled[2].as_dict()}}
    table = _table(rows + [pooled], args.snr)
    with atomic_path(out / "loeo.json") as tmp:
        Path(tmp).write_text(json.dumps(summary, indent=1, allow_nan=False) + "\n")
    with atomic_path(out / "loeo.md") as tmp:
        Path(tmp).write_text(f"`dszoo-train {' '.join(train_args)}` on {data}, final epoch:\n\n{table}\n")
    print(table)
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
