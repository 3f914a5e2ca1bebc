"""Keyword spotting on a live stream, one 20 ms hop at a time.

A network whose convolutions do not pad rows (``row_padding: none`` in its config, e.g.
``ds_cnn_s_stream``) computes each output row from the input rows under it alone, so a stream
needs each layer's newest output row only: ``StreamingNetwork`` keeps every layer's last input
rows between hops (its state, as the streaming mode of google-research's kws_streaming keeps
it: Rybakov et al. 2020, "Streaming keyword spotting on mobile devices") and computes one row
of each layer when a hop completes one, and its head averages the last rows that one window
holds. Fed one MFCC frame per hop (``FrameMFCC``), its posteriors are those of the
sliding-window scan (``KeywordSpotter.window_posteriors``) at a hop of the network's row stride,
window for window.

``LiveDetector`` turns posteriors arriving one window at a time into detections as soon as each
is final; ``detect_all`` applies the same rules to a whole recording at once.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .mfcc import MFCC

__all__ = ["Detection", "FrameMFCC", "LiveDetector", "StreamingNetwork", "detect_all", "stream_posteriors",
           "streaming_problem"]


@dataclass(frozen=True)
class Detection:
    """A keyword heard at ``seconds`` (the start of the window where it peaked)."""

    seconds: float
    keyword: str
    probability: float


class _RowUnit:
    """One conv of a row-local network (its BatchNorm folded in) and the activation after it,
    as it computes one output row: ``act(rows @ matrix + bias)``, ``rows`` the ``kernel_rows``
    input rows it reads, one after another. The matrix is found by putting each unit input
    through the conv, one per group of channels (a depthwise conv's are small): at these sizes
    a NumPy matrix product costs a few microseconds where a tiny conv's set-up in PyTorch costs
    tens, and the output row is the conv's."""

    def __init__(self, unit: nn.Module, channels: int, width: int) -> None:
        conv = unit.conv
        self.kernel_rows, self.stride = conv.kernel_size[0], conv.stride[0]
        if conv.dilation[0] != 1:
            raise ValueError(f"cannot stream a conv dilated along rows ({conv})")
        self.groups, per_group = conv.groups, channels // conv.groups
        n = self.kernel_rows * per_group * width  # one group's inputs, in the order rows are buffered
        basis = torch.zeros(n, self.kernel_rows, channels, width)
        for g in range(self.groups):  # group g's unit inputs in batch rows of block g
            basis[:, :, g * per_group:(g + 1) * per_group] = torch.eye(n).view(n, self.kernel_rows, per_group, width)
        with torch.no_grad():
            zero = conv(torch.zeros(1, channels, self.kernel_rows, width))
            out = (conv(basis.transpose(1, 2)) - zero)[:, :, 0]  # (n, out channels, out width)
        self.out_channels, self.out_width = out.shape[1], out.shape[2]
        per_out = self.out_channels // self.groups
        # (groups, n, per_out * out width): group g's inputs to its outputs
        self.matrix = np.ascontiguousarray(out.view(n, self.groups, per_out * self.out_width).transpose(0, 1).numpy())
        # where each group's inputs lie in the buffered rows (rows, channels, width), flattened
        flat = np.arange(self.kernel_rows * channels * width).reshape(self.kernel_rows, self.groups, per_group, width)
        self.gather = np.ascontiguousarray(flat.transpose(1, 0, 2, 3).reshape(self.groups, n))
        self.bias = zero.flatten().numpy()
        self.macs = self.out_channels * self.out_width * per_group * self.kernel_rows * conv.kernel_size[1]  # a row's
        self.rows_apart = 1  # how many input rows of the network apart its rows come (set by StreamingNetwork)
        self.act = _NUMPY_ACTS.get(type(unit.act))
        self.torch_act = unit.act

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` ``(kernel_rows * channels * width,)``, row after row -> one output row."""
        if self.groups == 1:
            y = rows @ self.matrix[0]
        else:  # (groups, 1, n) @ (groups, n, out): each group's inputs to its outputs
            y = np.matmul(rows[self.gather][:, None], self.matrix).reshape(-1)
        y += self.bias
        return self.act(y) if self.act is not None else self.torch_act(torch.from_numpy(y)).numpy()


_NUMPY_ACTS = {nn.ReLU: lambda y: np.maximum(y, 0, out=y), nn.Identity: lambda y: y,
               nn.ReLU6: lambda y: np.clip(y, 0, 6, out=y)}


def _row_units(model: nn.Module) -> list[nn.Module]:
    """The convs of ``model``'s stem and stages in order, each in its ``ConvNormAct`` (a
    row-local network is a chain of them: ``ModelConfig.row_padding``)."""
    from ..blocks import ConvNormAct

    return [m for part in (model.stem, model.stages) for m in part.modules() if isinstance(m, ConvNormAct)]


def streaming_problem(model: Optional[nn.Module], mfcc: Optional[MFCC] = None) -> Optional[str]:
    """Why ``model`` (with front end ``mfcc``; either may be ``None``) cannot run on a stream a
    hop at a time, or ``None`` when it can: nothing before the head may look at a whole window,
    as the padding of a window's edge rows, a per-window input normalisation (both excluded by
    ``row_padding: none``) and a front end that scales each clip do, and the head must average."""
    if mfcc is not None and mfcc.normalise_peak:
        return (f"the MFCC front end {mfcc.preset} divides each clip by its peak; a stream needs one that does not "
                "(arm_kws: dszoo-train --mfcc arm_kws)")
    cfg = getattr(model, "cfg", None)
    name = getattr(cfg, "name", type(model).__name__)
    if model is not None and getattr(cfg, "row_padding", "same") != "none":
        return (f"{name} pads the rows of its convolutions, so a window's edge rows differ from a stream's; a "
                "streaming model has row_padding: none (ds_cnn_s_stream)")
    if model is not None and not isinstance(getattr(model, "global_pool", None), nn.AdaptiveAvgPool2d):
        return f"{name} pools a window by its maximum; a stream averages the window's rows (head.pool: avg)"
    return None


class StreamingNetwork:
    """``model`` (a ``ZooNet`` with ``row_padding: none``) run one input row at a time; see the
    module's docstring. ``window_rows``: the rows of one window (49 MFCC frames). The model is
    copied and its BatchNorms folded; it is not changed."""

    def __init__(self, model: nn.Module, window_rows: int) -> None:
        import copy

        from ..deployment.backends import fold_batchnorm

        problem = streaming_problem(model)
        if problem:
            raise ValueError(f"cannot stream: {problem}")
        self.model = fold_batchnorm(copy.deepcopy(model).eval())
        channels, _, width = model.cfg.input_size
        self.units: list[_RowUnit] = []
        rows, stride = 1, 1
        for unit in _row_units(self.model):
            self.units.append(_RowUnit(unit, channels, width))
            channels, width = self.units[-1].out_channels, self.units[-1].out_width
            rows, stride = rows + (self.units[-1].kernel_rows - 1) * stride, stride * self.units[-1].stride
            self.units[-1].rows_apart = stride
        self.receptive_rows, self.row_stride = rows, stride
        self.pooled_rows = (window_rows - rows) // stride + 1
        if self.pooled_rows < 1:
            raise ValueError(f"cannot stream: one output row reads {rows} input rows, more than a window's {window_rows}")
        self.window_rows = (self.pooled_rows - 1) * stride + rows  # the rows a window's posterior reads
        self.channels, self.width = channels, width
        m = self.model  # a plain head (pool, Linear) in NumPy too; any other through forward_head
        plain = all(isinstance(getattr(m, k, None), (nn.Identity, nn.Dropout)) for k in ("pooled_norm", "head_conv", "head_drop"))
        self.head = (m.classifier.weight.detach().numpy().T.copy(), m.classifier.bias.detach().numpy().copy()) \
            if plain and isinstance(m.classifier, nn.Linear) and isinstance(m.global_pool, nn.AdaptiveAvgPool2d) else None
        self.reset()

    def reset(self) -> None:
        """Forget the stream: the next row is the first."""
        self.buffers = [deque(maxlen=u.kernel_rows) for u in self.units]
        self.seen = [0] * len(self.units)
        self.pooled: deque[np.ndarray] = deque(maxlen=self.pooled_rows)
        self.rows_in = 0

    def step(self, row: Union[np.ndarray, torch.Tensor]) -> Optional[torch.Tensor]:
        """Feed the next input row (its ``channels x width`` values); the class probabilities of
        the window whose last row this completes, or ``None`` while no window is complete here."""
        self.rows_in += 1
        x = np.asarray(row, np.float32).reshape(-1)
        for i, unit in enumerate(self.units):
            self.buffers[i].append(x)
            self.seen[i] += 1
            if self.seen[i] < unit.kernel_rows or (self.seen[i] - unit.kernel_rows) % unit.stride:
                return None
            x = unit(np.concatenate(self.buffers[i]) if unit.kernel_rows > 1 else x)
        self.pooled.append(x.reshape(self.channels, self.width).mean(axis=1))
        if len(self.pooled) < self.pooled_rows:
            return None
        mean = np.mean(self.pooled, axis=0, dtype=np.float32)
        if self.head is None:
            with torch.no_grad():
                return torch.softmax(self.model.forward_head(torch.from_numpy(mean).view(1, -1, 1, 1)), dim=1)[0]
        logits = mean @ self.head[0] + self.head[1]
        e = np.exp(logits - logits.max())
        return torch.from_numpy(e / e.sum())

    def first_row(self) -> int:
        """The index (from 0) of the first input row of the window ``step`` just completed."""
        return self.rows_in - self.window_rows


class FrameMFCC:
    """The MFCC rows of a stream, frame by frame, as ``MFCC(preset)`` computes them for a clip
    (in NumPy: one FFT a frame costs microseconds, a ``torch.stft`` set-up tens). Frame ``k``
    of a stretch reads its samples ``k * hop`` to ``k * hop + window``, as the frames of a clip
    starting there do; nothing is cut, padded or normalised, so a preset that divides each clip
    by its peak has no frames (``streaming_problem``)."""

    def __init__(self, mfcc: MFCC) -> None:
        if mfcc.normalise_peak:
            raise ValueError(f"cannot stream: {streaming_problem(None, mfcc)}")
        self.hop, self.window_samples, self.fft_length = mfcc.hop, mfcc.window_samples, mfcc.fft_length
        self.dtype = np.float64 if mfcc.window.dtype == torch.float64 else np.float32
        self.window = mfcc.window[: self.window_samples].numpy().astype(self.dtype)
        self.mel, self.dct = mfcc.mel.numpy().astype(self.dtype), mfcc.dct.numpy().astype(self.dtype)
        self.clamp_floor, self.log_floor = mfcc.clamp_floor, mfcc.log_floor

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        """``(frames, coefficients)`` float32 of every whole frame of ``wave`` ``(samples,)``."""
        count = (len(wave) - self.window_samples) // self.hop + 1 if len(wave) >= self.window_samples else 0
        if not count:
            return np.zeros((0, self.dct.shape[1]), np.float32)
        wave = wave.astype(self.dtype, copy=False)
        frames = np.stack([wave[k * self.hop:k * self.hop + self.window_samples] for k in range(count)])
        mel = np.abs(np.fft.rfft(frames * self.window, n=self.fft_length)) @ self.mel
        mel = np.maximum(mel, self.log_floor) if self.clamp_floor else mel + self.log_floor
        return (np.log(mel) @ self.dct).astype(np.float32)


def stream_posteriors(network: StreamingNetwork, frames: FrameMFCC, chunks: Iterable[np.ndarray],
                      clip_samples: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start sample, class probabilities)`` of each window of ``clip_samples`` as the audio
    ``chunks`` complete it: one MFCC frame per hop through ``network``. Memory: a window's rows
    in the network and a chunk of samples, however long the stream."""
    hop = frames.hop
    network.reset()
    pending: deque[tuple[int, torch.Tensor]] = deque()  # complete in rows, not yet in samples
    buffer = np.zeros(0, np.float32)
    received = 0
    for chunk in chunks:
        buffer = np.concatenate([buffer, np.asarray(chunk, np.float32)])
        received += len(chunk)
        rows = frames(buffer)
        buffer = buffer[len(rows) * hop:]
        for row in rows:
            probs = network.step(row)
            if probs is not None:
                pending.append((network.first_row() * hop, probs))
        while pending and pending[0][0] + clip_samples <= received:
            yield pending.popleft()


class LiveDetector:
    """Keywords from posteriors that arrive one window at a time: each class's probability
    averaged over ``smooth`` neighbouring windows (centred, zeros beyond the ends); where it
    reaches ``threshold`` a keyword is heard, reported once at the peak of its run above the
    threshold as soon as the run ends, and the same word is not reported again within
    ``refractory_seconds`` (the posterior handling of Hello Edge's streaming test and of Chen
    et al. 2014). ``classes`` not to report (silence, unknown) are ``ignore``."""

    def __init__(self, classes: Sequence[str], threshold: float, smooth: int = 3, refractory_seconds: float = 1.0,
                 ignore: Sequence[str] = (), sample_rate: int = 16000) -> None:
        if smooth < 1:
            raise ValueError(f"smooth must be at least 1 window, got {smooth}")
        self.classes = list(classes)
        self.report = [c for c, name in enumerate(self.classes) if name not in ignore]
        self.threshold, self.smooth, self.refractory = threshold, smooth, refractory_seconds
        self.rate = sample_rate
        self.before = smooth // 2  # windows before the centre in the average
        self.recent: deque[tuple[int, int, torch.Tensor]] = deque(maxlen=smooth)  # (window, start, probs)
        self.centre = 0  # the next window whose smoothed value is due
        self.count = 0
        self.runs: dict[int, tuple[int, float]] = {}  # class -> (start sample, smoothed value) of the run's peak
        self.last: dict[int, float] = {}

    def push(self, start: int, probs: torch.Tensor) -> list[Detection]:
        """The next window's posteriors; detections that are final now."""
        self.recent.append((self.count, start, probs))
        self.count += 1
        out: list[Detection] = []
        while self.centre + self.smooth - 1 - self.before < self.count:  # its last neighbour has arrived
            out += self._settle(self.centre)
            self.centre += 1
        return out

    def finish(self) -> list[Detection]:
        """The end of the stream: the last windows (their later neighbours are zeros) and the runs still open."""
        out: list[Detection] = []
        while self.centre < self.count:
            out += self._settle(self.centre)
            self.centre += 1
        for c in list(self.runs):
            out += self._close(c)
        return out

    def _settle(self, i: int) -> list[Detection]:
        lo = i - self.before
        total = sum((p for j, _, p in self.recent if lo <= j < lo + self.smooth), torch.zeros(len(self.classes)))
        value = total / self.smooth
        start = next(s for j, s, _ in self.recent if j == i)
        out: list[Detection] = []
        for c in self.report:
            v = float(value[c])
            if v >= self.threshold:
                if c not in self.runs or v > self.runs[c][1]:
                    self.runs[c] = (start, v)
            elif c in self.runs:
                out += self._close(c)
        return out

    def _close(self, c: int) -> list[Detection]:
        start, value = self.runs.pop(c)
        seconds = start / self.rate
        if seconds - self.last.get(c, -1e9) < self.refractory:
            return []
        self.last[c] = seconds
        return [Detection(seconds, self.classes[c], value)]


def detect_all(classes: Sequence[str], starts: Sequence[int], probs: torch.Tensor, threshold: float, smooth: int = 3,
               refractory_seconds: float = 1.0, ignore: Sequence[str] = (), sample_rate: int = 16000) -> list[Detection]:
    """``LiveDetector``'s detections of a whole recording's posteriors ``(windows, classes)`` at
    once, in time order: the averages summed in the same order (so equal to the bit), the runs
    above the threshold found with array operations (a threshold sweep over an hour of windows
    takes seconds, not minutes)."""
    n = len(starts)
    if n == 0:
        return []
    before = smooth // 2
    padded = torch.cat([torch.zeros(before, probs.shape[1], dtype=probs.dtype), probs,
                        torch.zeros(smooth, probs.shape[1], dtype=probs.dtype)])
    total = torch.zeros_like(probs)
    for j in range(smooth):  # window i averages windows i - before ... i - before + smooth - 1, in that order
        total = total + padded[j:j + n]
    smoothed = (total / smooth).numpy()
    found: list[Detection] = []
    for c, name in enumerate(classes):
        if name in ignore:
            continue
        above = np.concatenate([[False], smoothed[:, c] >= threshold, [False]])
        edges = np.flatnonzero(above[1:] != above[:-1])  # run i: edges[2i] to edges[2i + 1] (exclusive)
        last = -1e9
        for a, b in zip(edges[::2], edges[1::2]):
            peak = a + int(np.argmax(smoothed[a:b, c]))
            seconds = starts[peak] / sample_rate
            if seconds - last >= refractory_seconds:
                found.append(Detection(seconds, name, float(smoothed[peak, c])))
                last = seconds
    return sorted(found, key=lambda d: d.seconds)
