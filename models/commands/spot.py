"""``dszoo-spot``: keywords in WAV files, with the shipped DS-CNN-S spotter or a model trained by
``dszoo-train --dataset speech_commands`` (a first argument ending in .pt or .safetensors).

    dszoo-spot clip.wav                                  # the shipped spotter: top-3 classes of a clip
    dszoo-spot runs/kws/best.pt clip.wav                 # top-3 keywords of a one-second clip
    dszoo-spot runs/kws/best.pt recordings/              # every .wav in a folder and its subfolders
    dszoo-spot runs/kws/best.pt long.wav --threshold 0.8  # a long recording: each keyword with its time
    dszoo-spot clip.wav --runtime pte                    # the network run by ExecuTorch (XNNPACK)
    arecord -f S16_LE -r 16000 -c 1 -t raw | dszoo-spot -  # live from the microphone: each keyword as it is heard
    dszoo-spot --follow growing.wav                      # a WAV file still being recorded, read as it grows
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

from ..deployment.runtimes import EDGE_RUNTIMES, ExportError
from .cli import ArgumentParser, UsageError, fraction, positive_float, positive_int, run_cli

if TYPE_CHECKING:
    import numpy as np

    from ..audio.spot import KeywordSpotter

__all__ = ["cli", "main"]

LONG_SECONDS = 1.5
"""Recordings longer than this are scanned with a sliding window; shorter ones are one clip."""


def wav_files(folder: Path) -> list[Path]:
    """Every WAV file (``.wav`` or ``.WAV``) under ``folder``, sorted, subfolders included (a Speech Commands layout keeps
    its clips in one folder per word) but for hidden ones and the background noise; links to
    folders are not followed, so a link cycle cannot loop."""
    import os

    from ..audio.speech_commands import BACKGROUND_NOISE, is_wav

    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d != BACKGROUND_NOISE]
        found += [Path(root) / n for n in names if is_wav(n)]
    return sorted(found)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from ..audio.spot import load_spotter

    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="[MODEL] INPUT", help="optionally a model first (a dszoo-train "
                   "checkpoint .pt or a spotter .safetensors; default: the shipped DS-CNN-S), then WAV files or folders, "
                   "or - for a live stream on standard input (16-bit PCM at 16 kHz, raw mono or WAV)")
    p.add_argument("--top-k", type=positive_int, default=3)
    p.add_argument("--threshold", type=fraction, help="smoothed probability that counts as heard (default: the "
                   "model's operating point, 0.7 for a checkpoint that has none)")
    p.add_argument("--follow", action="store_true", help="the one WAV input is still being written: read it as it "
                   "grows, report each keyword as it is heard, stop when it has not grown for --idle-seconds")
    p.add_argument("--idle-seconds", type=_idle_seconds, help="--follow: how long the file may stop growing before "
                   f"it counts as finished (default {IDLE_SECONDS:g}, at most {MAX_IDLE_SECONDS:g})")
    p.add_argument("--runtime", choices=EDGE_RUNTIMES, help="run the network in this runtime (exported and checked "
                   "first; onnx: pip install 'dszoo[onnx]', pte: 'dszoo[executorch]', openvino: 'dszoo[openvino]')")
    args = p.parse_args(argv)
    model = args.inputs[0] if args.inputs[0].endswith((".pt", ".safetensors")) else None
    inputs = args.inputs[1:] if model else args.inputs
    if not inputs:
        raise UsageError(f"{model}: a model, but no WAV files or folders to listen to")
    if args.idle_seconds is not None and not args.follow:
        raise UsageError("--idle-seconds applies to --follow (a WAV file still being written); add --follow or drop it")
    args.idle_seconds = IDLE_SECONDS if args.idle_seconds is None else args.idle_seconds
    live = args.follow or "-" in inputs
    if live and len(inputs) != 1:
        raise UsageError(f"{'--follow' if args.follow else '-'} listens to one live stream; got {len(inputs)} inputs")
    files: list[Path] = []
    for item in map(Path, [] if live else inputs):
        if item.is_dir():
            found = wav_files(item)
            if not found:
                raise UsageError(f"{item}: no .wav files in this folder or its subfolders")
            files += found
        else:
            files.append(item)
    spotter = load_spotter(model)
    with tempfile.TemporaryDirectory() as folder:
        if args.runtime:
            try:
                spotter.notes.append(spotter.run_in(args.runtime, folder))
            except ExportError as exc:
                raise UsageError(str(exc)) from None
        for note in spotter.notes:
            print(f"note: {note}")
        if live:
            _listen_live(spotter, inputs[0], args)
        else:
            _listen(spotter, files, args)
    return 0


IDLE_SECONDS, MAX_IDLE_SECONDS = 3.0, 3600.0
"""How long ``--follow`` waits for a file to grow by default, and at most (a recorder paused for
longer has stopped)."""


def _idle_seconds(text: str) -> float:
    """argparse type of ``--idle-seconds``: a number above 0 and at most ``MAX_IDLE_SECONDS``."""
    value = positive_float(text)
    if value > MAX_IDLE_SECONDS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_IDLE_SECONDS:g} (an hour), got {text!r}")
    return value


def _listen_live(spotter: KeywordSpotter, source: str, args: argparse.Namespace) -> None:
    """Each keyword of a live stream on its own line as soon as it is heard, then a summary."""
    from ..audio.speech_commands import SAMPLE_RATE
    from ..audio.spot import live_audio

    name = "standard input" if source == "-" else source
    how = "a 20 ms hop at a time" if spotter.streaming_problem() is None else "a 1 s window at a time"
    print(f"listening to {name} ({how}, a window every {spotter.hop_seconds * 1000:.0f} ms); Ctrl-C stops", flush=True)
    samples = 0

    def counted() -> Iterator[np.ndarray]:
        nonlocal samples
        for chunk in live_audio(source, args.idle_seconds):
            samples += len(chunk)
            yield chunk

    heard = 0
    for d in spotter.listen(counted(), threshold=args.threshold):
        heard += 1
        print(f"{d.seconds:.2f} s {d.keyword} {d.probability:.2f}", flush=True)
    print(f"{name} ({samples / SAMPLE_RATE:.1f} s): {heard} keyword{'s' if heard != 1 else ''} heard")


def _listen(spotter: KeywordSpotter, files: Sequence[Path], args: argparse.Namespace) -> None:
    """Each file's keywords: a short clip's most probable classes, a long one's keywords in time."""
    from ..audio.speech_commands import SAMPLE_RATE
    from ..audio.spot import stream_audio

    for path in files:
        stream = stream_audio(path)
        note = f" (note: {'; '.join(stream.notes)})" if stream.notes else ""
        if stream.seconds <= LONG_SECONDS:
            wave = stream.read()
            start, probs = spotter.best_window(wave)
            if len(wave) > SAMPLE_RATE:  # a second of it is scored: say which
                stream.notes.append(f"{stream.seconds:.2f} s: scored the second from {start / SAMPLE_RATE:.2f} s, "
                                    "the most confident")
                note = f" (note: {'; '.join(stream.notes)})"
            ranked = ", ".join(f"{word} {prob:.2f}" for word, prob in spotter.ranked(probs, args.top_k))
            print(f"{path}: {ranked}{note}")
            continue
        found = spotter.scan(stream.chunks(), threshold=args.threshold)
        heard = "; ".join(f"{d.seconds:.1f} s {d.keyword} {d.probability:.2f}" for d in found) or "no keyword heard"
        print(f"{path} ({stream.seconds:.1f} s): {heard}{note}")


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
