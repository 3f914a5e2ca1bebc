"""Spotting keywords in recordings with a trained keyword model: a one-second clip gets its top
classes; a longer recording, or a live stream, is scanned with a 1 s window every hop (100 ms;
a streaming model's row stride, 40 ms for ``ds_cnn_s_stream``, run a 20 ms hop at a time by
``streaming``), the posteriors are smoothed over about 0.3 s of neighbouring windows, and each
keyword whose smoothed probability crosses a threshold is reported once, with its time (the
posterior handling of Hello Edge's streaming test and of Chen et al. 2014: ``LiveDetector``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..checkpoints import DEFAULT_THRESHOLD, read_trained_file
from ..errors import UsageError
from ..preprocessing import trained_front_end
from ..weights import SPOTTER_METADATA_KEY
from .mfcc import MFCC
from .speech_commands import SAMPLE_RATE, SILENCE, UNKNOWN
from .streaming import (Detection, FrameMFCC, LiveDetector, StreamingNetwork, detect_all, stream_posteriors,
                        streaming_problem)

__all__ = ["AudioStream", "BUNDLED_SPOTTER", "DEFAULT_THRESHOLD", "Detection", "HOP_SECONDS", "KeywordSpotter",
           "SMOOTH_SECONDS", "SPOTTER_METADATA_KEY",
           "bundled_spotter_path", "load_audio", "load_spotter", "save_spotter", "stream_audio"]


HOP_SECONDS = 0.1
"""How far apart the windows of a scan are (a streaming model's: its row stride)."""
SMOOTH_SECONDS = 0.3
"""How much of the posteriors' neighbourhood a detection averages (3 windows at 100 ms)."""


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
        self._stream: Optional[tuple[nn.Module, StreamingNetwork]] = None  # (model, its stream form)

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

    def streaming_problem(self) -> Optional[str]:
        """Why this spotter cannot run a hop at a time (``streaming.StreamingNetwork``), or ``None``."""
        if isinstance(self.model, _InRuntime):
            return "its network runs in an exported file's runtime"
        return streaming_problem(self.model, self.mfcc)

    def _network(self) -> Optional[StreamingNetwork]:
        """The network's stream form (built once for the model it has), or ``None`` where it cannot stream."""
        if self.streaming_problem() is not None:
            return None
        if self._stream is None or self._stream[0] is not self.model:
            self._stream = (self.model, StreamingNetwork(self.model, self.mfcc.frames))
        return self._stream[1]

    @property
    def hop_seconds(self) -> float:
        """How far apart its windows are: a streaming model's row stride in frames, else ``HOP_SECONDS``."""
        network = self._network()
        return HOP_SECONDS if network is None else network.row_stride * self.mfcc.hop / SAMPLE_RATE

    def posterior_stream(self, audio: Union[np.ndarray, Iterable[np.ndarray]], hop_seconds: Optional[float] = None,
                         batch: int = 64) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start sample, class probabilities)`` of each 1 s window of a recording, given whole or
        as consecutive chunks (``stream_audio``, a live stream), as soon as the audio completes it,
        every ``hop_seconds`` (default: ``hop_seconds``). A streaming model at its own hop runs a
        20 ms hop at a time (``streaming``); otherwise windows are cut from a buffer of a chunk and
        a second, a batch at a time where a chunk holds several. Memory is bounded either way. A
        recording shorter than 1 s is one window, zero-padded."""
        hop_seconds = self.hop_seconds if hop_seconds is None else hop_seconds
        chunks = [audio] if isinstance(audio, np.ndarray) else audio
        network = self._network()
        if network is not None and abs(hop_seconds - self.hop_seconds) < 1e-9:
            first = np.zeros(0, np.float32)  # the first second, for a recording shorter than that

            def kept(chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
                nonlocal first
                for chunk in chunks:
                    if len(first) < SAMPLE_RATE:
                        first = np.concatenate([first, np.asarray(chunk, np.float32)[: SAMPLE_RATE - len(first)]])
                    yield chunk

            heard = False
            for pair in stream_posteriors(network, FrameMFCC(self.mfcc), kept(chunks), SAMPLE_RATE):
                heard = True
                yield pair
            if not heard:
                yield 0, self.posteriors(torch.from_numpy(np.pad(first, (0, SAMPLE_RATE - len(first))))[None])[0]
            return
        hop = int(round(hop_seconds * SAMPLE_RATE))
        buffer, offset, next_start = np.zeros(0, np.float32), 0, 0
        for chunk in chunks:
            buffer = np.concatenate([buffer, np.asarray(chunk, np.float32)])
            todo = list(range(next_start, offset + len(buffer) - SAMPLE_RATE + 1, hop))
            for i in range(0, len(todo), batch):
                part = todo[i:i + batch]
                windows = np.stack([buffer[s - offset:s - offset + SAMPLE_RATE] for s in part])
                yield from zip(part, self.posteriors(torch.from_numpy(windows)))
            next_start = todo[-1] + hop if todo else next_start
            drop = min(next_start - offset, len(buffer))
            buffer, offset = buffer[drop:], offset + drop
        if next_start == 0:  # shorter than one window
            yield 0, self.posteriors(torch.from_numpy(np.pad(buffer, (0, SAMPLE_RATE - len(buffer))))[None])[0]

    def window_posteriors(self, audio: Union[np.ndarray, Iterable[np.ndarray]], hop_seconds: Optional[float] = None,
                          batch: int = 64) -> tuple[list[int], torch.Tensor]:
        """``posterior_stream`` gathered: the start samples and ``(windows, classes)`` probabilities."""
        pairs = list(self.posterior_stream(audio, hop_seconds, batch))
        return [s for s, _ in pairs], torch.stack([p for _, p in pairs])

    def listen(self, audio: Union[np.ndarray, Iterable[np.ndarray]], hop_seconds: Optional[float] = None,
               smooth_windows: Optional[int] = None, threshold: Optional[float] = None,
               refractory_seconds: float = 1.0) -> Iterator[Detection]:
        """Each keyword of a recording or a live stream as soon as it is heard: ``posterior_stream``
        (windows every ``hop_seconds``, default its own) through a ``LiveDetector`` (``detect``'s rules)."""
        hop_seconds = self.hop_seconds if hop_seconds is None else hop_seconds
        detector = self.detector(threshold, smooth_windows, refractory_seconds, hop_seconds)
        for start, probs in self.posterior_stream(audio, hop_seconds):
            yield from detector.push(start, probs)
        yield from detector.finish()

    def scan(self, audio: Union[np.ndarray, Iterable[np.ndarray]], hop_seconds: Optional[float] = None,
             smooth_windows: Optional[int] = None, threshold: Optional[float] = None,
             refractory_seconds: float = 1.0) -> list[Detection]:
        """Keywords in a recording of any length (whole, or chunks as ``stream_audio`` gives
        them), in time order: ``listen`` to the end."""
        found = self.listen(audio, hop_seconds, smooth_windows, threshold, refractory_seconds)
        return sorted(found, key=lambda d: d.seconds)

    def detector(self, threshold: Optional[float] = None, smooth_windows: Optional[int] = None,
                 refractory_seconds: float = 1.0, hop_seconds: Optional[float] = None) -> LiveDetector:
        """A ``LiveDetector`` for this spotter's classes at ``threshold`` (default: its own),
        averaging ``smooth_windows`` (default: ``SMOOTH_SECONDS`` of windows ``hop_seconds`` apart,
        default its own hop, an odd count: 3 at 100 ms, 7 at 40 ms)."""
        threshold = self.threshold if threshold is None else threshold
        hop = self.hop_seconds if hop_seconds is None else hop_seconds
        smooth = smooth_windows or max(1, int(SMOOTH_SECONDS / hop + 1e-9)) | 1
        return LiveDetector(self.classes, threshold, smooth, refractory_seconds, ignore=(SILENCE, UNKNOWN))

    def detect(self, starts: Sequence[int], probs: torch.Tensor, threshold: Optional[float] = None,
               smooth_windows: Optional[int] = None, refractory_seconds: float = 1.0) -> list[Detection]:
        """The detections of a recording's window posteriors (``window_posteriors``), in time
        order: each class's probability averaged over ``smooth_windows`` neighbours; a keyword
        (not silence or unknown) whose average reaches ``threshold`` (default: the spotter's) is
        reported at its peak, then the same word is not reported again for ``refractory_seconds``."""
        hop = (starts[1] - starts[0]) / SAMPLE_RATE if len(starts) > 1 else None  # the windows' own spacing
        detector = self.detector(threshold, smooth_windows, refractory_seconds, hop)  # its rules, over the whole at once
        return detect_all(self.classes, starts, probs, detector.threshold, detector.smooth, refractory_seconds,
                          (SILENCE, UNKNOWN))


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

    from safetensors.torch import save

    from ..files import atomic_path, write_through_memory

    about = {"model_config": spotter.model.cfg.model_dump(mode="json"), "class_names": spotter.classes,
             "mfcc_preset": spotter.mfcc.preset, "threshold": spotter.threshold, "card": card or {}}
    state = {k: v.detach().contiguous().cpu() for k, v in spotter.model.state_dict().items()}
    with atomic_path(path, replace=False) as tmp:
        meta = {SPOTTER_METADATA_KEY: json.dumps(about, allow_nan=False)}  # strict JSON
        write_through_memory(tmp, lambda fh: fh.write(save(state, metadata=meta)))


def load_spotter(checkpoint: Union[str, Path, None] = None) -> KeywordSpotter:
    """A ``KeywordSpotter`` from a ``dszoo-train`` checkpoint of a speech-commands run or a
    ``save_spotter`` file (its model, class names, front end and threshold); ``None``: the
    shipped DS-CNN-S spotter."""
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


LIVE_CHUNK_SECONDS = 0.1
"""How much audio a live stream is read in at a time (``live_audio``)."""


class _LiveBytes:
    """Bytes of standard input as they come, or of a file as it grows: ``read`` waits for more
    while the file grows, and returns ``b""`` at the end (standard input closed, the file no
    longer growing for ``idle_seconds``, or Ctrl-C)."""

    def __init__(self, path: str, idle_seconds: float) -> None:
        import os
        import sys

        from ..files import regular_file

        self.stdin = path == "-"
        self.name = "standard input" if self.stdin else path
        self.fd = sys.stdin.buffer.fileno() if self.stdin else os.open(regular_file(path, "--follow"), os.O_RDONLY)
        self.idle_seconds = idle_seconds

    def read(self, size: int) -> bytes:
        import os
        import time

        waited = 0.0
        try:
            while True:
                data = os.read(self.fd, size)
                if data or self.stdin or waited >= self.idle_seconds:
                    return data
                time.sleep(0.05)
                waited += 0.05
        except KeyboardInterrupt:
            return b""

    def read_exactly(self, size: int, what: str) -> bytes:
        data = b""
        while len(data) < size:
            more = self.read(size - len(data))
            if not more:
                raise UsageError(f"{self.name}: ended inside its WAV header ({what})")
            data += more
        return data

    def close(self) -> None:
        import os

        if not self.stdin:
            os.close(self.fd)


def _wav_stream_format(source: _LiveBytes, riff: bytes) -> tuple[int, int]:
    """``(channels, rate)`` from a WAV header whose first 4 bytes ``riff`` were read, leaving
    ``source`` at the start of its samples (the data chunk's size is not trusted: a recorder
    writing it has not set it yet). 16-bit PCM only."""
    import struct

    source.read_exactly(8, "RIFF size and WAVE")
    fmt = None
    while True:
        chunk, size = struct.unpack("<4sI", source.read_exactly(8, "a chunk header"))
        if chunk == b"data":
            break
        if size > 1 << 20:
            raise UsageError(f"{source.name}: a WAV chunk {chunk!r} of {size} bytes before its samples")
        body = source.read_exactly(size + (size & 1), f"chunk {chunk!r}")
        if chunk == b"fmt " and size >= 16:
            fmt = struct.unpack("<HHIIHH", body[:16])
    if fmt is None:
        raise UsageError(f"{source.name}: a WAV stream without a fmt chunk before its samples")
    tag, channels, rate, _, _, bits = fmt
    if tag not in (1, 0xFFFE) or bits != 16 or channels < 1:
        raise UsageError(f"{source.name}: a live WAV stream must be 16-bit PCM, got format {tag} with {bits} bits")
    return channels, rate


def live_audio(path: str, idle_seconds: float = 3.0) -> Iterator[np.ndarray]:
    """A live recording as 16 kHz mono float32 chunks of ``LIVE_CHUNK_SECONDS`` while it is made.
    ``path`` ``-`` is standard input: raw 16-bit little-endian mono PCM at 16 kHz
    (``arecord -f S16_LE -r 16000 -c 1 -t raw``, ``sox -d -t raw -r 16000 -b 16 -c 1 -e signed -``)
    or a WAV stream of 16-bit PCM at 16 kHz (``arecord -f S16_LE -r 16000``); any other path is a
    WAV file still being written, read as it grows until it has not grown for ``idle_seconds``.
    Ctrl-C ends the stream. Memory: one chunk."""
    source = _LiveBytes(path, idle_seconds)
    try:
        head = source.read(4)
        channels, rate = _wav_stream_format(source, head) if head == b"RIFF" else (1, SAMPLE_RATE)
        if rate != SAMPLE_RATE:
            raise UsageError(f"{source.name}: a live stream at {rate} Hz; it must be at {SAMPLE_RATE} Hz "
                             f"(arecord -r {SAMPLE_RATE}, sox ... -r {SAMPLE_RATE})")
        frame = 2 * channels
        size = int(LIVE_CHUNK_SECONDS * SAMPLE_RATE) * frame
        rest = b"" if head == b"RIFF" else head
        while True:
            data = source.read(size)
            if not data:
                break
            data = rest + data
            whole = len(data) // frame * frame
            rest = data[whole:]
            if whole:
                samples = np.frombuffer(data[:whole], "<i2").reshape(-1, channels)
                yield (samples.mean(axis=1) if channels > 1 else samples[:, 0]).astype(np.float32) / 32768.0
    finally:
        source.close()
