"""Spotting keywords in recordings with a trained keyword model: a one-second clip gets its top
classes; a longer recording is scanned with a 1 s window every 100 ms, the posteriors are
smoothed over neighbouring windows, and each keyword whose smoothed probability crosses a
threshold is reported once, with its time (the posterior-handling of Hello Edge's streaming
test and of Chen et al. 2014)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .mfcc import MFCC
from .speech_commands import SAMPLE_RATE, SILENCE, UNKNOWN, decode_wav

__all__ = ["Detection", "KeywordSpotter", "load_audio", "load_spotter"]


@dataclass(frozen=True)
class Detection:
    """A keyword heard at ``seconds`` (the start of the window where it peaked)."""

    seconds: float
    keyword: str
    probability: float


class KeywordSpotter:
    """A keyword model (MFCC input) with its class names and front end."""

    def __init__(self, model: nn.Module, classes: Sequence[str], preset: str = "mlperf_tiny") -> None:
        self.model = model.eval()
        self.classes = list(classes)
        self.mfcc = MFCC(preset)
        self.notes: list[str] = []  # how the model was loaded, for the user (load_spotter's)

    @torch.no_grad()
    def posteriors(self, clips: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Class probabilities ``(clips, classes)`` of one-second clips ``(clips, 16000)``."""
        out = [torch.softmax(self.model(self.mfcc(clips[i:i + batch])), dim=1) for i in range(0, len(clips), batch)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def top_k(self, wave: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of a clip (cut or zero-padded to one second)."""
        clip = torch.zeros(SAMPLE_RATE)
        clip[: min(len(wave), SAMPLE_RATE)] = torch.from_numpy(wave[:SAMPLE_RATE])
        probs = self.posteriors(clip.unsqueeze(0))[0]
        values, indices = probs.topk(min(k, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values, indices)]

    def scan(self, wave: np.ndarray, hop_seconds: float = 0.1, smooth_windows: int = 3, threshold: float = 0.7,
             refractory_seconds: float = 1.0) -> list[Detection]:
        """Keywords in a recording of any length: posteriors of 1 s windows every ``hop_seconds``,
        averaged over ``smooth_windows`` neighbours; a keyword (not silence or unknown) whose
        smoothed probability reaches ``threshold`` is reported at its peak, then the same word
        is not reported again for ``refractory_seconds``."""
        hop = int(round(hop_seconds * SAMPLE_RATE))
        padded = np.concatenate([wave, np.zeros(max(0, SAMPLE_RATE - len(wave)), np.float32)])
        starts = list(range(0, len(padded) - SAMPLE_RATE + 1, hop))
        windows = torch.from_numpy(np.stack([padded[s:s + SAMPLE_RATE] for s in starts]))
        probs = self.posteriors(windows)
        kernel = torch.ones(1, 1, smooth_windows) / smooth_windows
        smoothed = nn.functional.conv1d(probs.T.unsqueeze(1), kernel, padding=smooth_windows // 2).squeeze(1).T
        smoothed = smoothed[: len(starts)]
        detections: list[Detection] = []
        last_time: dict[str, float] = {}
        for c, name in enumerate(self.classes):
            if name in (SILENCE, UNKNOWN):
                continue
            p = smoothed[:, c]
            above = (p >= threshold).nonzero().flatten().tolist()
            runs: list[list[int]] = []
            for i in above:
                if runs and i == runs[-1][-1] + 1:
                    runs[-1].append(i)
                else:
                    runs.append([i])
            for run in runs:
                peak = max(run, key=lambda i: float(p[i]))
                seconds = starts[peak] / SAMPLE_RATE
                if seconds - last_time.get(name, -1e9) >= refractory_seconds:
                    detections.append(Detection(seconds, name, float(p[peak])))
                    last_time[name] = seconds
        return sorted(detections, key=lambda d: d.seconds)


def load_spotter(checkpoint: Union[str, Path]) -> KeywordSpotter:
    """A ``KeywordSpotter`` from a ``dszoo-train`` checkpoint of a speech-commands run (its model,
    class names and front end)."""
    from ..errors import UsageError
    from ..training.run_files import load_checkpoint
    from ..weights import model_from_checkpoint

    ckpt = load_checkpoint(str(checkpoint), what="checkpoint")
    classes: Optional[list[str]] = ckpt.get("class_names")
    if not classes:
        raise UsageError(f"{checkpoint}: not a keyword-spotting run (it names no classes; train with "
                         "--dataset speech_commands)")
    model, notes = model_from_checkpoint(ckpt, str(checkpoint))
    spotter = KeywordSpotter(model, classes, ckpt.get("mfcc_preset", "mlperf_tiny"))
    spotter.notes = notes
    return spotter


def load_audio(path: Union[str, Path]) -> tuple[np.ndarray, list[str]]:
    """A recording as 16 kHz mono float32, and notes on what was converted."""
    from .synth import resample

    wave, rate, channels = decode_wav(path)
    notes = [f"mixed {channels} channels down to mono"] if channels > 1 else []
    if rate != SAMPLE_RATE:
        wave = resample(wave, rate, SAMPLE_RATE)
        notes.append(f"resampled from {rate} Hz to {SAMPLE_RATE} Hz")
    return wave, notes
