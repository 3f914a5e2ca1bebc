"""Google Speech Commands (Warden 2018) in its folder layout, for keyword spotting with the DS-CNN.

``ROOT/<word>/<speaker>_nohash_<n>.wav`` (16 kHz mono), ``ROOT/_background_noise_/*.wav``, and,
when present, ``validation_list.txt`` / ``testing_list.txt``; otherwise the dataset's own hash
rule puts every recording of a speaker in one split. Two tasks: ``12`` (silence, unknown and the
ten keywords, silence and unknown each 10% of every split, as in Hello Edge and MLPerf Tiny)
and ``all`` (every word its own class). Training clips are augmented as the references do
(background noise with probability 0.8 at a volume from U(0, 0.1), clipped to [-1, 1], and a
time shift of up to 100 ms); validation and test clips are not, and their features are
computed once.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

from ..errors import UsageError
from ..files import regular_file
from .manifest import GENERATING, interrupted_dataset, is_respelled, read_manifest
from .mfcc import MFCC

__all__ = ["BACKGROUND_NOISE", "KEYWORDS", "SILENCE", "SpeechCommands", "UNKNOWN", "as_mono_float",
           "build_speech_commands", "decode_wav", "generated_speaker_id", "generated_speaker_split", "read_wav",
           "read_wav_16k", "split_rule", "which_set"]

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
SILENCE, UNKNOWN = "_silence_", "_unknown_"
BACKGROUND_NOISE = "_background_noise_"
SAMPLE_RATE = 16000
_MAX_PER_CLASS = 2**27 - 1  # the dataset's constant: a file's split never changes as files are added

PathLike = Union[str, Path]


def which_set(filename: str, validation_percentage: float = 10.0, testing_percentage: float = 10.0) -> str:
    """``"validation"``, ``"testing"`` or ``"training"`` for a file, by the Speech Commands rule:
    SHA-1 of the name without ``_nohash_...`` (so one speaker's recordings share a split),
    ``(int % 2^27) * 100 / (2^27 - 1)`` below 10 validation, below 20 testing."""
    speaker = re.sub(r"_nohash_.*$", "", os.path.basename(filename))
    digest = int(hashlib.sha1(speaker.encode()).hexdigest(), 16)
    percentage = (digest % (_MAX_PER_CLASS + 1)) * (100.0 / _MAX_PER_CLASS)
    if percentage < validation_percentage:
        return "validation"
    if percentage < validation_percentage + testing_percentage:
        return "testing"
    return "training"


def generated_speaker_id(name: str) -> str:
    """Eight hex digits naming a generated speaker in its clips' file names (``<id>_nohash_<n>.wav``),
    as the real dataset names its speakers: the start of the SHA-1 of ``name``."""
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def generated_speaker_split(name: str) -> str:
    """The split (``which_set``) a generated speaker called ``name`` lands in."""
    return which_set(f"{generated_speaker_id(name)}_nohash_0.wav")


MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1_000, 384_000
"""Sample rates a WAV file may declare: telephone-band to studio audio; anything else is a broken
or hostile header (a 1 s file claiming 10 MHz would cost gigabytes to resample)."""


def _open_wav(path: PathLike, mmap: bool = False) -> tuple[int, np.ndarray]:
    """``(rate, samples)`` as SciPy reads them (``mmap``: mapped, not read), the header checked."""
    from scipy.io import wavfile

    try:
        try:
            rate, data = wavfile.read(regular_file(path, "audio file"), mmap=mmap)
        except ValueError:
            if not mmap:
                raise
            rate, data = wavfile.read(regular_file(path, "audio file"))  # 24-bit PCM cannot be mapped
    except (ValueError, OSError, EOFError, ArithmeticError, LookupError, UnboundLocalError, struct.error) as exc:
        # scipy's reader: a header of 0 channels or 0 bits divides by zero, a bad chunk size
        # leaves a local unset; each is a file that is not audio
        detail = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise UsageError(f"{path}: not a readable WAV file ({detail})") from None
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise UsageError(f"{path}: sample rate {rate} Hz in its header; allowed: {MIN_SAMPLE_RATE:,} to "
                         f"{MAX_SAMPLE_RATE:,} Hz")
    return int(rate), data


def as_mono_float(data: np.ndarray, path: PathLike) -> np.ndarray:
    """WAV samples (any SciPy dtype, channels last) as mono float32 in [-1, 1]; non-finite
    samples are refused naming ``path``."""
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise UsageError(f"{path}: holds NaN or infinite samples; audio must be finite")
    if data.dtype.kind in "iu":
        info = np.iinfo(data.dtype)
        wave = (data.astype(np.float32) - (info.max + info.min + 1) / 2) / ((info.max - info.min + 1) / 2)
    else:
        wave = data.astype(np.float32)
    return wave.mean(axis=1) if wave.ndim == 2 else wave


def decode_wav(path: PathLike) -> tuple[np.ndarray, int, int]:
    """``(samples, rate, channels)`` of a WAV file: float32 in [-1, 1], channels mixed down
    (SciPy's reader: PCM of 8 to 32 bits and float). A file that is not audio is a ``UsageError``."""
    rate, data = _open_wav(path)
    return as_mono_float(data, path), rate, (data.shape[1] if data.ndim == 2 else 1)


def is_wav(path: PathLike) -> bool:
    """Whether a file name ends in ``.wav``, in any case (``B.WAV`` too)."""
    return str(path).lower().endswith(".wav")


def wav_files_in(folder: PathLike) -> list[Path]:
    """The WAV files directly in ``folder`` (``is_wav``: any case of the ending), sorted; none
    when it is not a folder."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if is_wav(p.name) and p.is_file()) if folder.is_dir() else []


def read_wav(path: PathLike) -> tuple[np.ndarray, int]:
    """``(samples, rate)`` of a WAV file, mono float32 (``decode_wav``)."""
    wave, rate, _ = decode_wav(path)
    return wave, rate


def read_wav_16k(path: PathLike) -> np.ndarray:
    """A WAV file as 16 kHz mono float32 (``read_wav``, resampled where it has another rate)."""
    from .synth import resample

    wave, rate = read_wav(path)
    return resample(wave, rate, SAMPLE_RATE)


def _clip(wave: np.ndarray) -> np.ndarray:
    """Exactly one second: cut, or zero-padded at the end."""
    out = np.zeros(SAMPLE_RATE, np.float32)
    out[: min(len(wave), SAMPLE_RATE)] = wave[:SAMPLE_RATE]
    return out


@dataclass
class _Items:
    files: list[Optional[str]]  # None: a silence clip
    labels: list[int]


def _split_lists(root: Path) -> Optional[dict[str, set[str]]]:
    lists = {split: root / f"{split}_list.txt" for split in ("validation", "testing")}
    if not all(p.is_file() for p in lists.values()):
        return None
    return {split: {line.strip() for line in regular_file(p, "split list").read_text().splitlines() if line.strip()}
            for split, p in lists.items()}


def split_rule(root: Path) -> Callable[[str], str]:
    """How ``root`` assigns a clip (``word/name.wav``) to a split: by its ``validation_list.txt``
    and ``testing_list.txt`` where it has them (Google's Speech Commands: what ``dszoo-train`` holds
    out), else by the dataset's hash of the file name (``which_set``). Training, recordings and
    scoring all split by it, so none of them mistakes a trained voice for a held-out one."""
    return _rule_of(_split_lists(root))


def _rule_of(lists: Optional[dict[str, set[str]]]) -> Callable[[str], str]:
    """``split_rule`` of a folder whose split lists (``_split_lists``) are ``lists``."""
    if lists is None:
        return lambda rel: which_set(rel.rsplit("/", 1)[-1])
    return lambda rel: next((split for split, names in lists.items() if rel in names), "training")


def _engine_of(root: Path, manifest: dict[str, dict[str, str]], hold_out_engine: Optional[str]) -> dict[str, str]:
    """The engine of every clip of ``root``'s ``manifest``, checked against ``hold_out_engine``;
    empty when no engine is held out."""
    if hold_out_engine is None:
        return {}
    if not manifest:
        raise UsageError(f"--hold-out-engine {hold_out_engine}: {root} has no manifest.csv naming each clip's engine "
                         "(dszoo-make-speech-data writes one)")
    engines = sorted({row["engine"] for row in manifest.values()})
    if hold_out_engine not in engines or len(engines) < 2:
        raise UsageError(f"--hold-out-engine {hold_out_engine}: {root} holds clips of {', '.join(engines)}; hold out "
                         "one of them, with at least one other left to train on")
    return {f: row["engine"] for f, row in manifest.items()}


def _index(root: Path, task: str, seed: int, hold_out_engine: Optional[str] = None,
           unknown_ratio: float = 0.125) -> tuple[list[str], dict[str, _Items]]:
    """Class names and, per split, the files and labels of ``task``: in the 12-class task
    silence and unknown each 10% of every split, except that the training split holds
    ``unknown_ratio`` unknown clips per keyword clip (0.125 is 10%). With ``hold_out_engine``
    (a generated dataset's manifest names each clip's engine) the test split is every clip of
    that engine, and the other engines' test speakers join their training split. Respelled
    keywords (``make_data.RESPELLINGS``) are used in training only."""
    if not root.is_dir():
        raise UsageError(f"--data-dir {root}: no such directory")
    if interrupted_dataset(root):
        raise UsageError(f"--data-dir {root}: its generation did not finish ({GENERATING} is still there); run "
                         f"dszoo-make-speech-data --out {root} again to replace it")
    words = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name != BACKGROUND_NOISE and not d.name.startswith("."))
    if not words:
        raise UsageError(f"--data-dir {root}: no word folders (expected <word>/<speaker>_nohash_<n>.wav inside)")
    lists = _split_lists(root)
    split_of = _rule_of(lists)
    manifest = read_manifest(root)
    engine_of = _engine_of(root, manifest, hold_out_engine)
    respelled = {f for f, row in manifest.items() if is_respelled(row)}  # other spellings: training only
    by_split: dict[str, list[tuple[str, str]]] = {"training": [], "validation": [], "testing": []}
    listed = 0
    for word in words:
        for wav in wav_files_in(root / word):
            rel = f"{word}/{wav.name}"
            split = split_of(rel)
            listed += split != "training" and lists is not None
            if engine_of:
                split = "testing" if engine_of.get(rel) == hold_out_engine else \
                    "training" if split == "testing" else split
            if rel not in respelled or split == "training":
                by_split[split].append((str(wav), word))
    if lists is not None and not listed and any(lists.values()):
        example = next(iter(sorted(lists["validation"] | lists["testing"])))
        raise UsageError(f"--data-dir {root}: validation_list.txt and testing_list.txt name no file in it (e.g. "
                         f"{example!r}; expected lines such as 'yes/0a7c2a8d_nohash_0.wav')")
    if task == "all":
        classes = words
    elif task == "12":
        missing = [w for w in KEYWORDS if w not in words]
        if missing:
            raise UsageError(f"--data-dir {root}: the 12-class task needs the keyword folders {', '.join(missing)}")
        classes = [SILENCE, UNKNOWN, *KEYWORDS]
    else:
        raise UsageError(f"unknown speech task {task!r}; allowed: 12, all")
    index = {c: i for i, c in enumerate(classes)}
    rng = np.random.default_rng(seed)
    out: dict[str, _Items] = {}
    for split, entries in by_split.items():
        if task == "all":
            out[split] = _Items([f for f, _ in entries], [index[w] for _, w in entries])
            continue
        known = [(f, index[w]) for f, w in entries if w in KEYWORDS]
        others = [f for f, w in entries if w not in KEYWORDS]
        extra = math.ceil(len(known) / 8)  # silence and unknown each 10% of the split
        wanted = math.ceil(len(known) * unknown_ratio) if split == "training" else extra
        unknown = [others[i] for i in sorted(rng.choice(len(others), min(wanted, len(others)), replace=False))] \
            if others else []
        files = [f for f, _ in known] + unknown + [None] * extra
        labels = [label for _, label in known] + [index[UNKNOWN]] * len(unknown) + [index[SILENCE]] * extra
        out[split] = _Items(files, labels)
    return classes, out


def _background(root: Path) -> list[np.ndarray]:
    folder = root / BACKGROUND_NOISE
    noises = []
    for wav in wav_files_in(folder):
        wave = read_wav_16k(wav)
        if len(wave) >= SAMPLE_RATE:
            noises.append(wave)
    return noises


class SpeechCommands(Dataset):
    """Training clips of one split as MFCC features ``(1, 49, 10)`` with their labels, each
    clip augmented afresh every epoch (``set_epoch``; its draws are those of seed, epoch and
    clip, whichever worker reads it) by the levers of ``augment`` (``audio.augment``;
    default ``basic``: noise with probability 0.8 at a volume from U(0, 0.1) and a shift of up
    to 100 ms, as the references train)."""

    def __init__(self, waves: torch.Tensor, labels: Sequence[int], silence: Sequence[bool], noises: list[np.ndarray],
                 mfcc: MFCC, seed: int = 0, augment: Sequence[str] = ("shift", "noise")) -> None:
        from .augment import Augmenter

        self.waves, self.labels, self.silence = waves, torch.tensor(list(labels)), list(silence)
        self.mfcc = mfcc
        self.seed = seed
        self.epoch = torch.zeros((), dtype=torch.long).share_memory_()  # seen by DataLoader workers, persistent too
        self.generator = torch.Generator().manual_seed(seed)
        self.augmenter = Augmenter(tuple(augment), self.generator, tuple(torch.from_numpy(n) for n in noises),
                                   self.waves)  # context borrows words (a silence clip is zeros: nothing)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentations of epoch ``epoch`` from now on (the training loop calls it before
        each epoch, as it calls the sampler's)."""
        self.epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        # each clip's draws of each epoch from their own stream (seed, epoch, clip): the same whichever
        # worker reads it (the workers shared one generator's copies, and replayed each other's draws)
        # and in a run resumed at that epoch (a fresh generator replayed epoch 0's)
        self.generator.manual_seed(int(np.random.SeedSequence([self.seed, int(self.epoch), i]).generate_state(1)[0]))
        wave = self.augmenter.wave(self.waves[i].float(), silence=self.silence[i])
        with torch.no_grad():
            return self.augmenter.features(self.mfcc(wave, self.augmenter.warp())[0]), self.labels[i]


def _load_waves(files: list[Optional[str]]) -> torch.Tensor:
    waves = np.zeros((len(files), SAMPLE_RATE), np.float32)
    for k, f in enumerate(files):
        if f is not None:
            waves[k] = _clip(read_wav_16k(f))
    return torch.from_numpy(waves)


def _fill_silence(waves: torch.Tensor, silence: Sequence[bool], noises: list[np.ndarray], seed: int) -> None:
    """Silence clips of an evaluation split, in place: a background-noise crop at a volume from
    U(0, 1), as the references make them in every split, drawn from ``seed`` so that the split
    is the same on every run (all zeros where the folder has no background noise)."""
    if not noises:
        return
    rng = np.random.default_rng(seed)
    for k in np.flatnonzero(silence):
        noise = noises[int(rng.integers(len(noises)))]
        start = int(rng.integers(len(noise) - SAMPLE_RATE + 1))
        waves[k] = torch.from_numpy(noise[start:start + SAMPLE_RATE] * np.float32(rng.uniform(0, 1)))


@torch.no_grad()
def _features(mfcc: MFCC, waves: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([mfcc(waves[i:i + batch]) for i in range(0, len(waves), batch)]) if len(waves) else \
        torch.zeros(0, 1, mfcc.frames, mfcc.dct.shape[1])


@dataclass
class SpeechSplits:
    """Training set (augmented), validation and test sets (features computed once), class names."""

    train: Dataset
    val: Dataset
    test: Dataset
    classes: list[str]
    description: str


def build_speech_commands(root: PathLike, task: str = "12", preset: str = "mlperf_tiny", seed: int = 0,
                          augment: Sequence[str] = ("shift", "noise"), hold_out_engine: Optional[str] = None,
                          unknown_ratio: float = 0.125) -> SpeechSplits:
    """The splits of a Speech Commands folder (the real dataset or ``dszoo-make-speech-data``'s),
    the training clips augmented by the levers ``augment`` (``audio.augment``)."""
    root = Path(root)
    classes, items = _index(root, task, seed, hold_out_engine, unknown_ratio)
    empty = [s for s in ("training", "validation", "testing") if not items[s].files]
    if empty:
        why = "its split lists leave them empty" if _split_lists(root) is not None else "it needs more speakers"
        raise UsageError(f"--data-dir {root}: no recordings fall in the {' and '.join(empty)} split(s); {why}")
    noises = _background(root)
    mfcc = MFCC(preset)
    train_items = items["training"]
    train = SpeechCommands(_load_waves(train_items.files), train_items.labels,
                           [f is None for f in train_items.files], noises, mfcc, seed, augment)

    def fixed(split: str, split_seed: int) -> TensorDataset:
        waves = _load_waves(items[split].files)
        _fill_silence(waves, [f is None for f in items[split].files], noises, split_seed)
        return TensorDataset(_features(mfcc, waves), torch.tensor(items[split].labels))

    val, test = fixed("validation", seed + 1), fixed("testing", seed + 2)
    from .augment import levers_text

    held_out = f", test: every {hold_out_engine} clip" if hold_out_engine else ""
    description = (f"speech commands {root} ({task}-class task, {len(train)} train / {len(val)} val / {len(test)} "
                   f"test clips{held_out}, {len(classes)} classes, augment {levers_text(tuple(augment))})")
    return SpeechSplits(train, val, test, classes, description)
