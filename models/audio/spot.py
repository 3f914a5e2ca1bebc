"""Spotting keywords in recordings with a trained keyword model: a one-second clip gets its top
classes; a longer recording is scanned with a 1 s window every 100 ms, the posteriors are
smoothed over neighbouring windows, and each keyword whose smoothed probability crosses a
threshold is reported once, with its time (the posterior-handling of Hello Edge's streaming
test and of Chen et al. 2014)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..checkpoints import DEFAULT_THRESHOLD, read_trained_file
from ..preprocessing import trained_front_end
from ..weights import SPOTTER_METADATA_KEY
from .mfcc import MFCC
from .speech_commands import SAMPLE_RATE, SILENCE, UNKNOWN

__all__ = ["AudioStream", "BUNDLED_SPOTTER", "DEFAULT_THRESHOLD", "Detection", "KeywordSpotter", "SPOTTER_METADATA_KEY",
           "bundled_spotter_path", "load_audio", "load_spotter", "save_spotter", "stream_audio"]


@dataclass(frozen=True)
class Detection:
    """A keyword heard at ``seconds`` (the start of the window where it peaked)."""

    seconds: float
    keyword: str
    probability: float


class _InRuntime(nn.Module):
    """An exported file's run (``Runtime.load``) where a spotter calls its network."""

    def __init__(self, run: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.run = run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.run(x)


class KeywordSpotter:
    """A keyword model (MFCC input) with its class names and front end."""

    def __init__(self, model: nn.Module, classes: Sequence[str], preset: str = "mlperf_tiny") -> None:
        self.model = model.eval()
        self.classes = list(classes)
        self.mfcc = MFCC(preset)
        self.notes: list[str] = []  # how the model was loaded, for the user (load_spotter's)
        self.threshold = DEFAULT_THRESHOLD  # what scan reports at; a shipped spotter carries its own
        self.card: dict = {}  # what it was trained with and measured on (a checkpoint's options, a file's card)

    def run_in(self, fmt: str, folder: Union[str, Path]) -> str:
        """Run the network in runtime ``fmt`` of ``dszoo.deployment.runtimes`` from now on: it is
        exported in fp32 to a file in ``folder`` (checked there as ``dszoo-export`` checks it)
        and that file runs every window. Returns how the file was checked."""
        from ..deployment.export import export_model
        from ..deployment.runtimes import RUNTIMES

        runtime = RUNTIMES[fmt]
        out = Path(folder) / f"spotter{runtime.suffixes[0]}"
        check = export_model(self.model, fmt, out, tuple(self.model.cfg.input_size))
        self.model = _InRuntime(runtime.load([str(out), *map(str, runtime.companions(out))]))
        return f"{runtime.runtime} runs the network ({out.name}: {check})"

    @torch.no_grad()
    def posteriors(self, clips: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Class probabilities ``(clips, classes)`` of one-second clips ``(clips, 16000)``."""
        out = [torch.softmax(self.model(self.mfcc(clips[i:i + batch])), dim=1) for i in range(0, len(clips), batch)]
        return torch.cat(out) if out else torch.zeros(0, len(self.classes))

    def top_k(self, wave: np.ndarray, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of a clip: of its one second (zero-padded if shorter),
        or of a longer clip's most confident second (``best_window``)."""
        return self.ranked(self.best_window(wave)[1], k)

    def ranked(self, probs: torch.Tensor, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` most probable classes of one window's ``probs``, with their probabilities."""
        values, indices = probs.topk(min(k, len(self.classes)))
        return [(self.classes[i], float(v)) for v, i in zip(values, indices)]

    def best_window(self, wave: np.ndarray, hop_seconds: float = 0.1) -> tuple[int, torch.Tensor]:
        """The start sample and class probabilities of the 1 s window of ``wave`` where the model
        is most confident, among windows every ``hop_seconds`` and the last second (a clip of a
        second or less is one window, zero-padded), so that no part of a clip goes unheard."""
        if len(wave) <= SAMPLE_RATE:
            clip = torch.zeros(SAMPLE_RATE)
            clip[: len(wave)] = torch.from_numpy(np.asarray(wave, np.float32))
            return 0, self.posteriors(clip.unsqueeze(0))[0]
        hop = int(round(hop_seconds * SAMPLE_RATE))
        starts = sorted(set(range(0, len(wave) - SAMPLE_RATE + 1, hop)) | {len(wave) - SAMPLE_RATE})
        windows = torch.from_numpy(np.stack([np.asarray(wave[a:a + SAMPLE_RATE], np.float32) for a in starts]))
        probs = self.posteriors(windows)
        best = int(probs.max(dim=1).values.argmax())
        return starts[best], probs[best]

    def window_posteriors(self, audio: Union[np.ndarray, Iterable[np.ndarray]], hop_seconds: float = 0.1,
                          batch: int = 64) -> tuple[list[int], torch.Tensor]:
        """Start samples and class probabilities of the 1 s windows every ``hop_seconds`` of a
        recording, given whole or as consecutive chunks (``stream_audio``): memory stays within
        a chunk and a second whatever the length. A recording shorter than 1 s is one window,
        zero-padded."""
        hop = int(round(hop_seconds * SAMPLE_RATE))
        chunks = [audio] if isinstance(audio, np.ndarray) else audio
        buffer, offset, next_start = np.zeros(0, np.float32), 0, 0
        starts: list[int] = []
        probs: list[torch.Tensor] = []

        def flush(last_start: int) -> None:
            nonlocal next_start
            todo = list(range(next_start, last_start + 1, hop))
            for i in range(0, len(todo), batch):
                part = todo[i:i + batch]
                windows = np.stack([buffer[s - offset:s - offset + SAMPLE_RATE] for s in part])
                probs.append(self.posteriors(torch.from_numpy(windows)))
            starts.extend(todo)
            next_start = todo[-1] + hop if todo else next_start

        for chunk in chunks:
            buffer = np.concatenate([buffer, np.asarray(chunk, np.float32)])
            flush(offset + len(buffer) - SAMPLE_RATE)
            drop = min(next_start - offset, len(buffer))
            buffer, offset = buffer[drop:], offset + drop
        if not starts:  # shorter than one window
            buffer = np.concatenate([buffer, np.zeros(SAMPLE_RATE - len(buffer), np.float32)])
            offset, next_start = 0, 0
            flush(0)
        return starts, torch.cat(probs)

    def scan(self, audio: Union[np.ndarray, Iterable[np.ndarray]], hop_seconds: float = 0.1, smooth_windows: int = 3,
             threshold: Optional[float] = None, refractory_seconds: float = 1.0) -> list[Detection]:
        """Keywords in a recording of any length (whole, or chunks as ``stream_audio`` gives
        them): ``detect`` over the posteriors of 1 s windows every ``hop_seconds``."""
        starts, probs = self.window_posteriors(audio, hop_seconds)
        return self.detect(starts, probs, threshold, smooth_windows, refractory_seconds)

    def detect(self, starts: Sequence[int], probs: torch.Tensor, threshold: Optional[float] = None,
               smooth_windows: int = 3, refractory_seconds: float = 1.0) -> list[Detection]:
        """Window posteriors averaged over ``smooth_windows`` neighbours; a keyword (not silence
        or unknown) whose smoothed probability reaches ``threshold`` (default: the spotter's
        ``threshold``) is reported at its peak, then the same word is not reported again for
        ``refractory_seconds``."""
        threshold = self.threshold if threshold is None else threshold
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


BUNDLED_SPOTTER = "ds_cnn_s_speech.safetensors"
"""The DS-CNN-S keyword spotter shipped in ``dszoo.pretrained`` (its card: docs/keyword_spotting.md)."""


def bundled_spotter_path() -> Path:
    """Where the shipped spotter lies in the installed package."""
    from importlib.resources import files

    return Path(str(files("dszoo.pretrained") / BUNDLED_SPOTTER))


def save_spotter(spotter: KeywordSpotter, path: Union[str, Path], card: Optional[dict] = None) -> None:
    """``spotter`` as one safetensors file: its weights, and in the file's metadata its model
    config, class names, front end, threshold and ``card`` (what it was trained and measured on)."""
    import json

    from safetensors.torch import save_file

    from ..files import atomic_path

    about = {"model_config": spotter.model.cfg.model_dump(mode="json"), "class_names": spotter.classes,
             "mfcc_preset": spotter.mfcc.preset, "threshold": spotter.threshold, "card": card or {}}
    state = {k: v.detach().contiguous().cpu() for k, v in spotter.model.state_dict().items()}
    with atomic_path(path, replace=False) as tmp:
        save_file(state, tmp, metadata={SPOTTER_METADATA_KEY: json.dumps(about, allow_nan=False)})  # strict JSON


def load_spotter(checkpoint: Union[str, Path, None] = None) -> KeywordSpotter:
    """A ``KeywordSpotter`` from a ``dszoo-train`` checkpoint of a speech-commands run or a
    ``save_spotter`` file (its model, class names, front end and threshold); ``None``: the
    shipped DS-CNN-S spotter."""
    from ..errors import UsageError
    from ..registry import model_from_checkpoint

    path = Path(checkpoint) if checkpoint is not None else bundled_spotter_path()
    ckpt = read_trained_file(path)
    classes: Optional[list[str]] = ckpt.get("class_names")
    if not classes:
        raise UsageError(f"{path}: not a keyword-spotting run (it names no classes; train with "
                         "--dataset speech_commands)")
    model, notes = model_from_checkpoint(ckpt, str(path))
    spotter = KeywordSpotter(model, classes, model.pretrained_cfg.get("mfcc") or trained_front_end(ckpt, str(path)))
    spotter.threshold = float(ckpt.get("threshold", DEFAULT_THRESHOLD))
    spotter.card = dict(ckpt.get("card") or {"training": ckpt.get("config", {})})
    spotter.notes = notes
    return spotter


def load_audio(path: Union[str, Path]) -> tuple[np.ndarray, list[str]]:
    """A recording as 16 kHz mono float32, and notes on what was converted."""
    stream = stream_audio(path)
    return stream.read(), stream.notes


@dataclass
class AudioStream:
    """A WAV file read a chunk at a time (memory-mapped where SciPy can), as 16 kHz mono float32."""

    path: str
    rate: int
    channels: int
    frames: int
    data: np.ndarray  # SciPy's samples, mapped or read
    notes: list[str]

    @property
    def seconds(self) -> float:
        return self.frames / self.rate

    def read(self) -> np.ndarray:
        """The whole recording at once."""
        return np.concatenate(list(self.chunks())) if self.frames else np.zeros(0, np.float32)

    def chunks(self, seconds: float = 30.0) -> Iterator[np.ndarray]:
        """Consecutive pieces of about ``seconds`` each, resampled to 16 kHz piece by piece: each
        piece starts on a multiple of the resampler's ``down`` input samples (so its output
        starts on a whole sample) and is filtered with a second of input on each side."""
        from .speech_commands import as_mono_float
        from .synth import resample_ratio

        if self.rate == SAMPLE_RATE:
            step = int(seconds * SAMPLE_RATE)
            for a in range(0, self.frames, step):
                yield as_mono_float(self.data[a:a + step], self.path)
            return
        from scipy.signal import resample_poly

        up, down = resample_ratio(self.rate, SAMPLE_RATE)
        step = max(down, int(seconds * self.rate) // down * down)
        margin = (self.rate // down + 1) * down  # at least a second of input, a multiple of down
        total = -(-self.frames * up // down)  # what resample_poly gives for the whole file
        for a in range(0, self.frames, step):
            lo, hi = max(0, a - margin), min(self.frames, a + step + margin)
            out = resample_poly(as_mono_float(self.data[lo:hi], self.path), up, down).astype(np.float32)
            first = (a - lo) * up // down
            count = step * up // down if a + step < self.frames else total - a * up // down
            yield out[first:first + count]


def stream_audio(path: Union[str, Path]) -> AudioStream:
    """``path`` opened for reading in chunks, with notes on what is converted."""
    from .speech_commands import _open_wav

    rate, data = _open_wav(path, mmap=True)
    channels = data.shape[1] if data.ndim == 2 else 1
    notes = [f"mixed {channels} channels down to mono"] if channels > 1 else []
    if rate != SAMPLE_RATE:
        notes.append(f"resampled from {rate} Hz to {SAMPLE_RATE} Hz")
    return AudioStream(str(path), rate, channels, len(data), data, notes)
