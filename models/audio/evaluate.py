"""Scoring a keyword model on every clip of a Speech Commands-layout folder, not one split of
it: keywords right, unknown words called unknown, the keywords that non-keywords set off, a
confusion by spoken word, and, where the folder's ``manifest.csv`` names them, rows per speech
engine and per voice. ``snr_db`` adds the folder's background noise at that signal-to-noise
ratio (``augment.add_noise``), drawn from a fixed seed. Keywords are also scored with the
unknown and silence classes set aside (the most probable keyword class): what a keyword model's
confusion between keywords allows, whatever its bar for calling a word unknown."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ..errors import UsageError
from .speech_commands import (BACKGROUND_NOISE, SAMPLE_RATE, SILENCE, UNKNOWN, _background, _clip, read_wav_16k,
                              split_rule, wav_files_in)
from .spot import KeywordSpotter

__all__ = ["GroupScore", "FolderScore", "percent", "score_folder"]


def percent(rate: float) -> str:
    """A rate as the commands print it: ``12.34%``, or ``-`` where there was nothing to count."""
    return "-" if math.isnan(rate) else f"{rate:.2f}%"


@dataclass
class GroupScore:
    """Counts for one group of clips (all, one engine, one voice)."""

    keyword_clips: int = 0
    keywords_right: int = 0
    keywords_right_among_keywords: int = 0  # the most probable keyword class, unknown and silence aside
    unknown_clips: int = 0
    unknown_right: int = 0  # called unknown
    unknown_as_keyword: int = 0  # a keyword reported for a non-keyword

    @property
    def keyword_top1(self) -> float:
        return 100.0 * self.keywords_right / self.keyword_clips if self.keyword_clips else float("nan")

    @property
    def keyword_top1_among_keywords(self) -> float:
        return 100.0 * self.keywords_right_among_keywords / self.keyword_clips if self.keyword_clips else float("nan")

    @property
    def unknown_rejected(self) -> float:
        return 100.0 * self.unknown_right / self.unknown_clips if self.unknown_clips else float("nan")

    @property
    def false_keyword_rate(self) -> float:
        return 100.0 * self.unknown_as_keyword / self.unknown_clips if self.unknown_clips else float("nan")

    def __add__(self, other: "GroupScore") -> "GroupScore":
        """The two groups' clips pooled."""
        return GroupScore(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(GroupScore)))

    def as_dict(self) -> dict[str, Optional[float]]:
        """The counts and rates, JSON-ready: a rate with no clips to count is ``None``."""
        def rate(value: float) -> Optional[float]:
            return None if math.isnan(value) else value

        return {**{f.name: getattr(self, f.name) for f in fields(GroupScore)},
                "keyword_top1": rate(self.keyword_top1),
                "keyword_top1_among_keywords": rate(self.keyword_top1_among_keywords),
                "unknown_rejected": rate(self.unknown_rejected), "false_keyword_rate": rate(self.false_keyword_rate)}

    @classmethod
    def from_dict(cls, counts: dict) -> "GroupScore":
        """The counts of an ``as_dict`` (a ``loeo.json`` row, say), to pool with others."""
        try:
            return cls(**{f.name: int(counts[f.name]) for f in fields(cls)})
        except (KeyError, TypeError, ValueError) as exc:
            raise UsageError(f"not a score's counts ({', '.join(f.name for f in fields(cls))}): missing or "
                             f"not a number: {exc}") from None


@dataclass
class FolderScore:
    """A model's score on a folder: overall, per engine, per voice, and the confusion of each
    spoken word with the predicted classes."""

    classes: list[str]
    overall: GroupScore = field(default_factory=GroupScore)
    engines: dict[str, GroupScore] = field(default_factory=lambda: defaultdict(GroupScore))
    voices: dict[str, GroupScore] = field(default_factory=lambda: defaultdict(GroupScore))
    confusion: dict[str, list[int]] = field(default_factory=dict)  # spoken word -> counts per predicted class

    def as_dict(self) -> dict:
        return {"classes": self.classes, "overall": self.overall.as_dict(),
                "engines": {k: v.as_dict() for k, v in sorted(self.engines.items())},
                "voices": {k: v.as_dict() for k, v in sorted(self.voices.items())},
                "confusion": dict(sorted(self.confusion.items()))}


def _clips(root: Path, engines: Optional[Sequence[str]], split: Optional[str] = None) -> list[tuple[str, str, str, str]]:
    """``(path, word, engine, voice)`` of every clip in ``root`` (of ``engines`` only, and of the
    speakers of ``split`` only, if given), respelled keywords aside (they are training data, not
    the word as said)."""
    from .manifest import interrupted_dataset, is_respelled, read_manifest

    if not root.is_dir():
        raise UsageError(f"{root}: no such directory")
    if interrupted_dataset(root):
        raise UsageError(f"{root}: its generation did not finish; run dszoo-make-speech-data --out {root} again")
    manifest, split_of = read_manifest(root), split_rule(root)
    if engines and not manifest:
        raise UsageError(f"--engines: {root} has no manifest.csv naming each clip's engine")
    known = sorted({row["engine"] for row in manifest.values()})
    unknown = [e for e in engines or () if e not in known]
    if unknown:
        raise UsageError(f"--engines {' '.join(unknown)}: {root} holds clips of {', '.join(known)}")
    out = []
    for folder in sorted(d for d in root.iterdir() if d.is_dir() and d.name != BACKGROUND_NOISE and not d.name.startswith(".")):
        for wav in wav_files_in(folder):
            row = manifest.get(f"{folder.name}/{wav.name}", {})
            engine, voice = row.get("engine", ""), f"{row.get('engine', '')}/{row.get('voice', '')}" if row else ""
            if (not engines or engine in engines) and not is_respelled(row) \
                    and (not split or split_of(f"{folder.name}/{wav.name}") == split):
                out.append((str(wav), folder.name, engine, voice))
    if not out:
        raise UsageError(f"{root}: no clips to score" + (f" of the {split} split" if split else "")
                         + " (expected <word>/<name>.wav inside)")
    return out


def score_folder(spotter: KeywordSpotter, root: Path, engines: Optional[Sequence[str]] = None,
                 snr_db: Optional[float] = None, seed: int = 0, chunk: int = 1024,
                 split: Optional[str] = None) -> FolderScore:
    """Every clip of ``root`` (of ``engines`` and the speakers of ``split``, where given) through
    ``spotter``: a word the model has a class for is that class, any other word is unknown (a
    model without an unknown class refuses such folders)."""
    from .augment import add_noise

    root = Path(root)
    clips = _clips(root, engines, split)
    classes = spotter.classes
    index = {c: i for i, c in enumerate(classes)}
    missing = sorted({w for _, w, _, _ in clips if w not in index} if UNKNOWN not in index else set())
    if missing:
        raise UsageError(f"{root}: the model has no class for the words {', '.join(missing[:5])} and no unknown class")
    noises = _background(root) if snr_db is not None else []
    if snr_db is not None and not noises:
        raise UsageError(f"--snr {snr_db}: {root} has no {BACKGROUND_NOISE} folder of noise at least 1 s long")
    keyword_classes = torch.tensor([i for i, c in enumerate(classes) if c not in (UNKNOWN, SILENCE)])
    rng = np.random.default_rng(seed)
    score = FolderScore(list(classes))
    for start in range(0, len(clips), chunk):
        part = clips[start:start + chunk]
        waves = torch.from_numpy(np.stack([_clip(read_wav_16k(path)) for path, _, _, _ in part]))
        if snr_db is not None:
            for k in range(len(waves)):
                noise = noises[int(rng.integers(len(noises)))]
                at = int(rng.integers(len(noise) - SAMPLE_RATE + 1))
                waves[k] = torch.clamp(add_noise(waves[k], torch.from_numpy(noise[at:at + SAMPLE_RATE]), snr_db), -1, 1)
        probs = spotter.posteriors(waves)
        predicted = probs.argmax(dim=1).tolist()
        among_keywords = (keyword_classes[probs[:, keyword_classes].argmax(dim=1)] if len(keyword_classes)
                          else probs.argmax(dim=1)).tolist()  # a model of unknown and silence alone has no keyword clips
        for (_, word, engine, voice), p, k in zip(part, predicted, among_keywords):
            truth = index.get(word, index.get(UNKNOWN))
            score.confusion.setdefault(word, [0] * len(classes))[p] += 1
            for group in [score.overall] + ([score.engines[engine], score.voices[voice]] if engine else []):
                if classes[truth] == UNKNOWN:
                    group.unknown_clips += 1
                    group.unknown_right += p == truth
                    group.unknown_as_keyword += classes[p] not in (UNKNOWN, SILENCE)
                else:
                    group.keyword_clips += 1
                    group.keywords_right += p == truth
                    group.keywords_right_among_keywords += k == truth
    return score
