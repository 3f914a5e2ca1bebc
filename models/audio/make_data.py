"""A Speech Commands stand-in synthesised offline: the real dataset's folder layout, words said
by many eSpeak NG speakers, and synthesised background noise. No dataset can be downloaded here;
this one can be regenerated anywhere ``pip`` works, deterministically from a seed.

A speaker is an accent or a non-English voice (reading the English words: harder accents),
crossed with a voice variant, a speaking rate and a pitch. Files are named
``<speaker id>_nohash_0.wav`` with the id a hash of the speaker, so the dataset's own split rule
puts every word of a speaker in one split: test speakers never occur in training.
"""
from __future__ import annotations

import hashlib
import itertools
import time
import wave as wavmodule
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .speech_commands import BACKGROUND_NOISE, KEYWORDS, SAMPLE_RATE, which_set
from .synth import Speaker, synthesizer

__all__ = ["ACCENTS", "FOREIGN_VOICES", "OTHER_WORDS", "VARIANTS", "GeneratedData", "generate_speech_data",
           "speaker_id", "speakers"]

ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
"""eSpeak NG's English accents."""
FOREIGN_VOICES = ("de", "fr", "es", "it", "nl", "pl", "pt", "sv", "hi", "ru")
"""Non-English voices, which read the English words with their own phonetics."""
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt",
            "+klatt2", "+croak")
RATES = (120, 145, 170, 200)
PITCHES = (25, 40, 55, 70, 85)
OTHER_WORDS = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow", "zero", "one",
               "two", "three", "four", "five", "six", "seven", "eight", "nine", "backward", "forward", "follow",
               "learn", "visual")
"""The Speech Commands words that are not keywords (the 12-class task's "unknown")."""


def speaker_id(speaker: Speaker) -> str:
    """Eight hex digits naming a speaker, as the real dataset names its speakers."""
    return hashlib.sha1(speaker.name.encode()).hexdigest()[:8]


def speakers(count: int, seed: int, foreign_share: float = 0.25, voices: Optional[Sequence[str]] = None) -> list[Speaker]:
    """``count`` distinct speakers drawn without replacement from accents (or non-English voices,
    about ``foreign_share`` of them) x variants x rates x pitches."""
    rng = np.random.default_rng(seed)
    english = list(itertools.product(voices or ACCENTS, VARIANTS, RATES, PITCHES))
    foreign = [] if voices else list(itertools.product(FOREIGN_VOICES, VARIANTS, RATES, PITCHES))
    n_foreign = min(len(foreign), round(count * foreign_share))
    picked = [english[i] for i in rng.choice(len(english), min(count - n_foreign, len(english)), replace=False)]
    picked += [foreign[i] for i in rng.choice(len(foreign), n_foreign, replace=False)] if n_foreign else []
    return [Speaker(voice + variant, rate, pitch, int(rng.integers(20, 80))) for voice, variant, rate, pitch in picked]


def _trimmed(wave: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(wave) > threshold * max(np.abs(wave).max(), 1e-9))
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave


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


@dataclass
class GeneratedData:
    """What ``generate_speech_data`` wrote."""

    root: Path
    clips: int
    speakers_by_split: dict[str, list[str]]
    seconds: float


def generate_speech_data(root: Path, *, speakers_count: int = 200, words: Sequence[str] = KEYWORDS + OTHER_WORDS,
                         seed: int = 0, noise_seconds: int = 30, voices: Optional[Sequence[str]] = None,
                         progress: Optional[Callable[[int], None]] = None) -> GeneratedData:
    """Write the dataset under ``root``: every speaker says every word once, plus background noise.
    ``progress(n)`` is called after each speaker with the clips written for it."""
    start = time.perf_counter()
    synth = synthesizer(SAMPLE_RATE)
    rng = np.random.default_rng(seed)
    people = speakers(speakers_count, seed, voices=voices)
    missing = sorted({p.voice for p in people} - set(synth.voices_available(sorted({p.voice for p in people}))))
    if missing:
        raise ValueError(f"eSpeak NG lacks the voices {', '.join(missing)}")
    by_split: dict[str, list[str]] = {"training": [], "validation": [], "testing": []}
    clips = 0
    for person in people:
        ident = speaker_id(person)
        by_split[which_set(f"{ident}_nohash_0.wav")].append(person.name)
        for word in words:
            write_wav(root / word / f"{ident}_nohash_0.wav", _place(_trimmed(synth.say(word, person)), rng))
            clips += 1
        if progress is not None:
            progress(len(words))
    for name, noise in background_noises(noise_seconds, seed).items():
        write_wav(root / BACKGROUND_NOISE / f"{name}.wav", noise)
    return GeneratedData(root, clips, by_split, time.perf_counter() - start)
