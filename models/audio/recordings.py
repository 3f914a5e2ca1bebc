"""Long recordings with keywords at known times, for measuring a spotter as it is used: words of
one split of a Speech Commands-layout folder (held-out voices) said one after another with
pauses, keywords among non-keywords, over the folder's background noise; each ``NAME.wav``
with ``NAME.csv`` listing every word's start, end and whether it is a keyword. Recordings
without keywords measure false alarms alone and choose a spotter's threshold.

A keyword counts as found when a detection of that word has its window's centre within
``TOLERANCE_SECONDS`` of the word; every other detection is a false alarm, counted per minute of
the recording outside keywords (non-keyword speech and noise).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import UsageError
from ..files import folder_in_place
from .speech_commands import (BACKGROUND_NOISE, KEYWORDS, SAMPLE_RATE, _background, read_wav_16k, split_rule,
                              wav_files_in)

__all__ = ["RECORDINGS", "TOLERANCE_SECONDS", "Event", "RecordingScore", "choose_threshold", "make_recordings",
           "read_events", "score_recordings"]

RECORDINGS = "recordings.json"
"""Written last into a folder of recordings: what they were made from."""
TOLERANCE_SECONDS = 0.5


@dataclass(frozen=True)
class Event:
    """A word in a recording, in seconds."""

    start: float
    end: float
    word: str
    keyword: bool


def _words_of_split(root: Path, split: str, engines: Optional[Sequence[str]]) -> dict[str, list[Path]]:
    from .manifest import interrupted_dataset, is_respelled, read_manifest

    if not root.is_dir() or interrupted_dataset(root):
        raise UsageError(f"--data-dir {root}: not a finished Speech Commands-layout folder")
    manifest, split_of = read_manifest(root), split_rule(root)
    words: dict[str, list[Path]] = {}
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and d.name != BACKGROUND_NOISE and not d.name.startswith(".")):
        for wav in wav_files_in(folder):
            row = manifest.get(f"{folder.name}/{wav.name}", {})
            if split_of(f"{folder.name}/{wav.name}") == split and (not engines or row.get("engine") in engines) \
                    and not is_respelled(row):
                words.setdefault(folder.name, []).append(wav)
    if not words:
        raise UsageError(f"--data-dir {root}: no clips of the {split} split" + (f" by {', '.join(engines)}" if engines else ""))
    return words


def make_recordings(root: Path, out: Path, *, count: int = 5, seconds: float = 60.0, split: str = "testing",
                    keywords: bool = True, engines: Optional[Sequence[str]] = None, seed: int = 0) -> list[Path]:
    """Write ``count`` recordings of ``seconds`` each into ``out`` (a new folder) from the words of
    ``split``: about 40% keywords (none with ``keywords=False``) among other words, with pauses
    of 0.3-1.5 s, over background noise 10-25 dB below the speech."""
    from .make_data import write_wav

    words = _words_of_split(root, split, engines)
    chosen = [w for w in words if keywords or w not in KEYWORDS]
    others = [w for w in chosen if w not in KEYWORDS]
    keys = [w for w in chosen if w in KEYWORDS]
    if not others or (keywords and not keys):
        raise UsageError(f"--data-dir {root}: the {split} split needs keywords and other words to make recordings")
    noises = _background(root)
    rng = np.random.default_rng(seed)
    with folder_in_place(out) as work:
        for r in range(count):
            wave, events = _recording(words, keys, others, noises, int(seconds * SAMPLE_RATE), rng)
            name = work / f"recording_{r:03d}"
            write_wav(name.with_suffix(".wav"), np.clip(wave, -1, 1))
            with open(name.with_suffix(".csv"), "w", newline="") as fh:
                writer = csv.writer(fh)
                writer.writerow(("start", "end", "word", "keyword"))
                writer.writerows((f"{e.start:.3f}", f"{e.end:.3f}", e.word, int(e.keyword)) for e in events)
        (work / RECORDINGS).write_text(json.dumps({"data_dir": str(root), "split": split, "keywords": keywords,
                                                   "engines": list(engines or []), "count": count,
                                                   "seconds": seconds, "seed": seed}, indent=1) + "\n")
    return [out / f"recording_{r:03d}.wav" for r in range(count)]


def _recording(words: dict[str, list[Path]], keys: list[str], others: list[str], noises: list[np.ndarray],
               total: int, rng: np.random.Generator) -> tuple[np.ndarray, list[Event]]:
    """One recording of ``total`` samples: words (a keyword 40% of the time where ``keys``) with
    pauses of 0.3-1.5 s, over a background noise 10-25 dB below the speech; and its words."""
    from .synth import loud_part

    wave = np.zeros(total, np.float32)
    events: list[Event] = []
    at = int(rng.uniform(0.3, 1.0) * SAMPLE_RATE)
    while True:
        word = str(rng.choice(keys)) if keys and rng.random() < 0.4 else str(rng.choice(others))
        clip = loud_part(read_wav_16k(words[word][int(rng.integers(len(words[word])))]))
        if at + len(clip) > total:
            break
        wave[at:at + len(clip)] += clip
        events.append(Event(at / SAMPLE_RATE, (at + len(clip)) / SAMPLE_RATE, word, word in KEYWORDS))
        at += len(clip) + int(rng.uniform(0.3, 1.5) * SAMPLE_RATE)
    speech_rms = float(np.sqrt(np.mean(wave[wave != 0] ** 2))) if (wave != 0).any() else 0.1
    if noises:
        noise = noises[int(rng.integers(len(noises)))]
        reps = np.resize(noise, total)
        level = speech_rms / max(float(np.sqrt(np.mean(reps ** 2))), 1e-9) * 10 ** (-rng.uniform(10, 25) / 20)
        wave = wave + level * reps
    return wave, events


def read_events(wav: Path) -> list[Event]:
    """The words of a recording, from the CSV beside it."""
    from ..files import regular_file

    truth = wav.with_suffix(".csv")
    with open(regular_file(truth, "recording's word list"), newline="") as fh:
        try:
            return [Event(float(r["start"]), float(r["end"]), r["word"], r["keyword"] == "1") for r in csv.DictReader(fh)]
        except (KeyError, ValueError, TypeError) as exc:
            raise UsageError(f"{truth}: not a word list (columns start, end, word, keyword: {exc})") from None


@dataclass
class RecordingScore:
    """Hits, misses and false alarms of one threshold over a folder of recordings."""

    threshold: float
    keywords: int
    hits: int
    false_alarms: int
    minutes: float  # of audio outside keywords

    @property
    def hit_rate(self) -> float:
        return 100.0 * self.hits / self.keywords if self.keywords else float("nan")

    @property
    def false_alarms_per_minute(self) -> float:
        return self.false_alarms / self.minutes if self.minutes else float("nan")

    def as_dict(self) -> dict[str, Optional[float]]:
        """The figures, JSON-ready: a rate with nothing to count (no keywords, no minutes) is ``None``."""
        per_minute = self.false_alarms_per_minute if self.minutes else None
        return {"threshold": self.threshold, "keywords": self.keywords, "hits": self.hits,
                "misses": self.keywords - self.hits, "false_alarms": self.false_alarms, "minutes": self.minutes,
                "hit_rate": self.hit_rate if self.keywords else None, "false_alarms_per_minute": per_minute,
                "false_alarms_per_hour": None if per_minute is None else 60 * per_minute}


def _match(detections: list, events: list[Event]) -> tuple[int, int]:
    """``(hits, false alarms)``: each keyword matched by at most one detection of its word."""
    keywords = [e for e in events if e.keyword]
    used = [False] * len(keywords)
    hits = false = 0
    for d in detections:
        centre = d.seconds + 0.5
        k = next((i for i, e in enumerate(keywords) if not used[i] and e.word == d.keyword
                  and e.start - TOLERANCE_SECONDS <= centre <= e.end + TOLERANCE_SECONDS), None)
        if k is None:
            false += 1
        else:
            used[k], hits = True, hits + 1
    return hits, false


THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.30, 0.995, 0.01))


def score_recordings(spotter, folder: Path, thresholds: Sequence[float] = THRESHOLDS) -> list[RecordingScore]:  # noqa: ANN001
    """Every recording of ``folder`` scanned once (``KeywordSpotter.window_posteriors``), then
    its detections at each of ``thresholds`` matched against its word list."""
    from .spot import stream_audio

    wavs = wav_files_in(folder)
    if not wavs:
        raise UsageError(f"{folder}: no recordings (.wav with a .csv word list beside each)")
    scores = [RecordingScore(t, 0, 0, 0, 0.0) for t in thresholds]
    for wav in wavs:
        events = read_events(wav)
        stream = stream_audio(wav)
        starts, probs = spotter.window_posteriors(stream.chunks())
        keyword_seconds = sum(e.end - e.start for e in events if e.keyword)
        for score in scores:
            hits, false = _match(spotter.detect(starts, probs, score.threshold), events)
            score.keywords += sum(e.keyword for e in events)
            score.hits += hits
            score.false_alarms += false
            score.minutes += (stream.seconds - keyword_seconds) / 60
    return scores


def choose_threshold(scores: Sequence[RecordingScore], max_false_alarms_per_minute: float,
                     stated: Optional[str] = None) -> RecordingScore:
    """The lowest threshold whose false alarms per minute stay within the bound (the most
    keywords found for that false-alarm rate); ``stated``: the bound as the user gave it, for
    the error (default "N per minute")."""
    ok = [s for s in scores if s.false_alarms_per_minute <= max_false_alarms_per_minute]
    if not ok:
        raise UsageError(f"no threshold up to {max(s.threshold for s in scores)} keeps false alarms within "
                         f"{stated or f'{max_false_alarms_per_minute} per minute'}")
    return min(ok, key=lambda s: s.threshold)
