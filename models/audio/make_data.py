"""A Speech Commands stand-in synthesised offline: the real dataset's folder layout, words said
by the speakers of every speech engine installed (``engines``: eSpeak NG from pip, and Pico,
Flite, Festival, SAM and DECtalk where they are), synthesised background noise, and
``manifest.csv`` naming each clip's engine and voice. No dataset can be downloaded here; this
one can be regenerated anywhere ``pip`` works, deterministically from a seed.

An eSpeak NG speaker is an accent or a non-English voice (reading the English words: harder
accents), crossed with a voice variant, a speaking rate and a pitch; a voice of another engine
is one speaker saying each word at several speeds and pitches. Files are named
``<speaker id>_nohash_<n>.wav`` with the id a hash of the speaker, so the dataset's own split
rule puts every word of a speaker in one split: test speakers never occur in training.
"""
from __future__ import annotations

import time
import wave as wavmodule
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .engines import ENGINES, clip_problem, find_engines, why_missing
from .manifest import GENERATING, MANIFEST, interrupted_dataset, is_respelled, read_manifest, write_manifest
from .speech_commands import BACKGROUND_NOISE, KEYWORDS, SAMPLE_RATE, generated_speaker_id, generated_speaker_split
from .synth import ACCENTS, FOREIGN_VOICES, VARIANTS, Speaker, loud_part, max_speakers, speakers

__all__ = ["ACCENTS", "FOREIGN_VOICES", "GENERATING", "MANIFEST", "OTHER_WORDS", "RESPELLINGS", "VARIANTS",
           "GeneratedData", "SpeakerPlan", "describe_manifest", "generate_speech_data", "interrupted_dataset",
           "is_respelled", "max_speakers", "plan_speakers", "read_manifest", "speaker_id", "speakers", "spoken_texts"]

OTHER_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "zero", "one",
               "two", "three", "four", "five", "six", "seven", "eight", "nine", "backward", "forward", "follow",
               "learn", "visual")
"""The Speech Commands words that are not keywords (the 12-class task's "unknown")."""
RESPELLINGS = {"yes": ("yess", "yiss", "yas"), "no": ("noh", "naw", "nou"), "up": ("upp", "ahp", "oop"),
               "down": ("doun", "dahn", "doon"), "left": ("lefft", "lift", "laft"), "right": ("rite", "raht", "roit"),
               "on": ("awn", "ahn", "onn"), "off": ("awf", "ahf", "oaf"), "stop": ("stahp", "stawp", "stup"),
               "go": ("goh", "gow", "goe")}
"""Each keyword spelt as three accents might say it, for ``respell``: every engine reads the
spellings with its own letter-to-sound rules, so one voice says the word in four ways. The
clips are the keyword's, for training only (``is_respelled``)."""


def speaker_id(speaker: Speaker) -> str:
    """Eight hex digits naming a speaker, as the real dataset names its speakers."""
    return generated_speaker_id(speaker.name)


def _trimmed(wave: np.ndarray) -> np.ndarray:
    speech = loud_part(wave)
    return speech if len(speech) else wave


def _place(word: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The word at a random place inside one second, at a random level."""
    word = word[:SAMPLE_RATE]
    clip = np.zeros(SAMPLE_RATE, np.float32)
    start = int(rng.integers(0, SAMPLE_RATE - len(word) + 1))
    clip[start:start + len(word)] = word / max(np.abs(word).max(), 1e-9) * rng.uniform(0.3, 0.95)
    return clip


def background_noises(seconds: int, seed: int) -> dict[str, np.ndarray]:
    """White, pink and brown noise, mains hum with harmonics, and two mixtures."""
    rng = np.random.default_rng(seed)
    n = seconds * SAMPLE_RATE
    white = rng.standard_normal(n)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 1.0)
    pink = np.fft.irfft(spectrum / np.sqrt(freqs), n)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(4001) / 4001, mode="same")  # keep it from drifting away
    t = np.arange(n) / SAMPLE_RATE
    hum = sum(np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi)) / k for k in (1, 2, 3, 5))
    norm = lambda x: (x / np.abs(x).max() * 0.5).astype(np.float32)  # noqa: E731
    return {"white_noise": norm(white), "pink_noise": norm(pink), "brown_noise": norm(brown), "hum_50hz": norm(hum),
            "pink_and_hum": norm(norm(pink) + 0.5 * norm(hum)), "white_and_brown": norm(0.3 * norm(white) + norm(brown))}


def write_wav(path: Path, wave: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """16-bit PCM mono WAV, written through a temporary file (``dszoo.files.atomic_path``)."""
    from ..files import atomic_path

    pcm = (np.clip(wave, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with atomic_path(path) as tmp, wavmodule.open(tmp, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.tobytes())


MAX_NOISE_SECONDS = 600


@dataclass
class GeneratedData:
    """What ``generate_speech_data`` wrote."""

    root: Path
    clips: int
    speakers_by_split: dict[str, list[str]]
    seconds: float
    engines: list[str] = field(default_factory=list)
    missing_engines: list[str] = field(default_factory=list)  # asked for (or known) but unable to speak here
    clips_by_engine: dict[str, int] = field(default_factory=dict)
    unsaid: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """``(engine, voice)``: the texts that voice could not say (``SpeechEngine.say_each``), once
    for each setting it failed at; those clips are left out."""
    dropped: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    """``(engine, voice)``: the texts whose clips ``engines.clip_problem`` refused (an engine that
    ``checks_clips``: a neural one), each with why; those clips are left out."""


@dataclass(frozen=True)
class SpeakerPlan:
    """One speaker of the dataset: its engine, name, hash id and the settings of its clips."""

    engine: str
    name: str
    settings: list

    @property
    def ident(self) -> str:
        return generated_speaker_id(self.name)


def plan_speakers(engines: Sequence[str], speakers_count: int, seed: int,
                  voices: Optional[Sequence[str]] = None) -> list[SpeakerPlan]:
    """Every speaker of every engine of ``engines``: ``speakers_count`` drawn eSpeak NG speakers,
    and each voice of the others (``voices`` restricts each engine to those it has)."""
    return [SpeakerPlan(name_, spk, settings) for name_ in engines
            for spk, settings in ENGINES[name_].speakers(speakers_count, seed, voices)]


def spoken_texts(words: Sequence[str], respell: bool) -> list[tuple[str, str, int]]:
    """``(word, text, k)`` of everything a speaker says: each word (``k`` 0), then with
    ``respell`` each keyword's ``RESPELLINGS`` (``k`` 1, 2, 3)."""
    return [(w, w, 0) for w in words] + [(w, text, k) for w in words if respell
                                         for k, text in enumerate(RESPELLINGS.get(w, ()), start=1)]


def generate_speech_data(root: Path, *, speakers_count: int = 200, words: Sequence[str] = KEYWORDS + OTHER_WORDS,
                         seed: int = 0, noise_seconds: int = 30, voices: Optional[Sequence[str]] = None,
                         engines: Optional[Sequence[str]] = None, respell: bool = False,
                         progress: Optional[Callable[[int], None]] = None) -> GeneratedData:
    """Write the dataset under ``root``: every speaker of every engine found among ``engines``
    (``None``: all known) says every word (and, with ``respell``, each keyword's
    ``RESPELLINGS``), then background noise and ``manifest.csv``. ``progress(n)`` is called
    after each speaker with the clips planned for it. A text a voice cannot say is left out and
    listed in ``unsaid``. The marker ``GENERATING`` exists from the first file to the last."""
    start = time.perf_counter()
    found, missing = find_engines(engines)
    if not found:
        raise ValueError(f"none of the speech engines {', '.join(e.name for e in missing)} can speak here "
                         f"({why_missing(missing)})")
    plans = plan_speakers([e.name for e in found], speakers_count, seed, voices)
    root.mkdir(parents=True, exist_ok=True)
    (root / GENERATING).write_text("dszoo-make-speech-data is writing this folder; run it again to replace it\n")
    rng = np.random.default_rng(seed)
    by_split: dict[str, list[str]] = {"training": [], "validation": [], "testing": []}
    rows, clips_by_engine = [], {e.name: 0 for e in found}
    unsaid: dict[tuple[str, str], list[str]] = {}
    dropped: dict[tuple[str, str], list[str]] = {}
    said = spoken_texts(words, respell)
    for plan in plans:
        by_split[generated_speaker_split(plan.name)].append(plan.name)
        engine = next(e for e in found if e.name == plan.engine)
        written = len(rows)
        for s, setting in enumerate(plan.settings):
            voice = getattr(setting, "voice", "")
            for (word, text, k), wave in zip(said, engine.say_each([text for _, text, _ in said], setting)):
                if wave is None:
                    unsaid.setdefault((plan.engine, voice), []).append(text)
                    continue
                problem = clip_problem(wave, text, getattr(setting, "speed", 1.0)) if engine.checks_clips else None
                if problem is not None:
                    dropped.setdefault((plan.engine, voice), []).append(f"{text} ({problem})")
                    continue
                name = f"{word}/{plan.ident}_nohash_{k * len(plan.settings) + s}.wav"  # the word itself: k = 0
                write_wav(root / name, _place(_trimmed(wave), rng))
                rows.append((name, word, plan.engine, voice, plan.name, _describe(setting), text))
        clips_by_engine[plan.engine] += len(rows) - written
        if progress is not None:
            progress(len(plan.settings) * len(said))
    for name, noise in background_noises(noise_seconds, seed).items():
        write_wav(root / BACKGROUND_NOISE / f"{name}.wav", noise)
    write_manifest(root / MANIFEST, rows)
    (root / GENERATING).unlink()
    return GeneratedData(root, len(rows), by_split, time.perf_counter() - start, [e.name for e in found],
                         [e.name for e in missing], clips_by_engine, unsaid, dropped)


def _describe(setting: object) -> str:
    if isinstance(setting, Speaker):
        return f"rate {setting.rate} pitch {setting.pitch} range {setting.pitch_range}"
    return f"speed {setting.speed} pitch {setting.pitch}"


def describe_manifest(root: Path) -> Optional[dict]:
    """What a generated dataset holds, from its manifest: clips, and by engine clips and speakers,
    respelled clips among them; None for a folder without one."""
    from collections import Counter

    rows = read_manifest(root).values()
    if not rows:
        return None
    clips = Counter(row["engine"] for row in rows)
    speakers = Counter(engine for engine, _ in {(row["engine"], row["speaker"]) for row in rows})
    return {"clips": len(rows), "respelled_clips": sum(map(is_respelled, rows)),
            "clips_by_engine": dict(sorted(clips.items())), "speakers_by_engine": dict(sorted(speakers.items()))}
