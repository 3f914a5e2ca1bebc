"""Keyword spotting on a live stream: the stateful streaming network gives the sliding-window
scan's posteriors, the live detector finds what the whole-recording rules find, ``dszoo-spot``
hears standard input and a growing WAV file as it hears the finished file, in bounded memory,
and bad live input is one line."""
from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_in_process
from dszoo import ConfigError, create_model, get_model_config, list_models
from dszoo.audio.speech_commands import KEYWORDS, SILENCE, UNKNOWN
from dszoo.audio.spot import KeywordSpotter, load_spotter, save_spotter
from dszoo.audio.streaming import LiveDetector, StreamingNetwork, detect_all

CLASSES = [SILENCE, UNKNOWN, *KEYWORDS]
STREAMABLE = [(name, {}) for name in list_models() if get_model_config(name).row_padding == "none"] + [
    (name, {"row_padding": "none", "input_norm": "none"}) for name in ("ds_cnn_m", "ds_cnn_l")]


def _tones(seconds: float, seed: int) -> np.ndarray:
    """Tone bursts of random pitch and level in faint noise: input whose windows differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    wave = rng.standard_normal(len(t)) * 0.01
    for _ in range(int(2 * seconds)):
        a = int(rng.integers(0, len(t) - 6000))
        wave[a:a + 6000] += rng.uniform(0.05, 0.8) * np.sin(2 * np.pi * rng.uniform(150, 3000) * t[a:a + 6000])
    return wave.astype(np.float32)


def _spotter(name: str, overrides: dict, preset: str = "narrowband_stream", seed: int = 0) -> KeywordSpotter:
    """A spotter of random weights whose posteriors vary: its BatchNorm statistics those of
    tone bursts (as precise BN sets them), the classifier centred on their features and scaled to
    logits of unit spread (at its initial scale every class would be about 1/12, and one class
    can lead on every window)."""
    torch.manual_seed(seed)
    model = create_model(name, num_classes=len(CLASSES), **overrides)
    spotter = KeywordSpotter(model, CLASSES, preset)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # a plain average of what it sees
    wave = _tones(4, seed)
    model.train()
    with torch.no_grad():
        mfcc = spotter.mfcc(torch.from_numpy(np.stack([wave[s:s + 16000] for s in range(0, 48001, 4000)])))
        model(mfcc)
        features = model.eval().forward_head(model.forward_features(mfcc), pre_logits=True)
        logits = model.classifier(features)
        model.classifier.weight.div_(logits.std(0, keepdim=True).T)
        model.classifier.bias.copy_(-model.classifier(features).mean(0) + model.classifier.bias)
    spotter.model = model.eval()
    return spotter


def _chunks(wave: np.ndarray, seed: int = 0) -> Iterator[np.ndarray]:
    """``wave`` in pieces of irregular length, as a live source delivers it."""
    rng = np.random.default_rng(seed)
    at = 0
    while at < len(wave):
        step = int(rng.integers(1, 5000))
        yield wave[at:at + step]
        at += step


@pytest.mark.parametrize("preset", ["narrowband_stream", "arm_kws"])
@pytest.mark.parametrize("name,overrides", STREAMABLE)
def test_a_streamed_network_gives_the_sliding_window_scans_posteriors(name: str, overrides: dict, preset: str) -> None:
    """A hop at a time, state carried: each window's posteriors equal the model's on that window
    (MFCC and network of the whole second) within 1e-5, for every window the scan at the
    stream's hop has, however the audio arrives."""
    spotter = _spotter(name, overrides, preset)
    assert spotter.streaming_problem() is None
    stride = StreamingNetwork(spotter.model, 49).row_stride
    assert spotter.hop_seconds == pytest.approx(stride * 0.02)
    wave = _tones(6, 1)
    pairs = list(spotter.posterior_stream(_chunks(wave)))
    hop = stride * 320
    assert [s for s, _ in pairs] == list(range(0, len(wave) - 16000 + 1, hop))
    windows = torch.from_numpy(np.stack([wave[s:s + 16000] for s, _ in pairs]))
    scanned = spotter.posteriors(windows)
    streamed = torch.stack([p for _, p in pairs])
    assert (streamed - scanned).abs().max() <= 1e-5
    assert scanned.argmax(1).unique().numel() > 1  # posteriors that vary: the comparison means something


def test_what_cannot_stream_says_why() -> None:
    """Padding rows, a per-window input norm, squeeze-excite and a front end that divides each
    clip by its peak each look at a whole window: refused, by name."""
    shipped = load_spotter()
    assert "divides each clip by its peak" in shipped.streaming_problem() and shipped.hop_seconds == 0.1
    padded = KeywordSpotter(create_model("ds_cnn_s"), CLASSES, "narrowband_stream")
    assert padded.streaming_problem().startswith("ds_cnn_s pads the rows of its convolutions")
    with pytest.raises(ValueError, match="^cannot stream: ds_cnn_s pads the rows"):
        StreamingNetwork(padded.model, 49)
    with pytest.raises(ConfigError, match="row_padding none: input_norm cepstral_mean normalises over a window's rows"):
        create_model("ds_cnn_s", row_padding="none")
    with pytest.raises(ConfigError, match=r"row_padding none: stages\[0\] \(ds\) is not row-local; a streamable "
                                          "network has conv rows and ds rows without se_ratio or skip"):
        create_model("mobilenet_v2_050", row_padding="none")  # its first block adds its input
    with pytest.raises(ConfigError, match=r"row_padding none: stages\[0\] \(xception\) is not row-local"):
        create_model("xception", row_padding="none")
    maxed = create_model("ds_cnn_s_stream")
    maxed.reset_classifier(12, global_pool="max")
    assert KeywordSpotter(maxed, CLASSES, "arm_kws").streaming_problem() == \
        "ds_cnn_s_stream pools a window by its maximum; a stream averages the window's rows (head.pool: avg)"
    with pytest.raises(ValueError, match="one output row reads 26 input rows, more than a window's 20"):
        StreamingNetwork(create_model("ds_cnn_s_stream"), 20)


def _reference_detect(classes: list[str], starts: list[int], probs: torch.Tensor, threshold: float, smooth: int,
                      refractory: float) -> list[tuple[float, str]]:
    """The whole-recording rules written plainly: a centred moving average (a convolution with
    zero padding), runs above the threshold, each reported at its peak unless the same word was
    reported within the refractory time."""
    kernel = torch.ones(1, 1, smooth, dtype=torch.float64) / smooth
    smoothed = nn.functional.conv1d(probs.double().T.unsqueeze(1), kernel, padding=smooth // 2).squeeze(1).T[: len(starts)]
    found, last = [], {}
    for c, name in enumerate(classes):
        if name in (SILENCE, UNKNOWN):
            continue
        runs: list[list[int]] = []
        for i in (smoothed[:, c] >= threshold).nonzero().flatten().tolist():
            if runs and i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        for run in runs:
            peak = max(run, key=lambda i: float(smoothed[i, c]))
            seconds = starts[peak] / 16000
            if seconds - last.get(name, -1e9) >= refractory:
                found.append((seconds, name))
                last[name] = seconds
    return sorted(found)


@pytest.mark.parametrize("smooth", [1, 2, 3, 7])
def test_the_live_detector_finds_what_the_whole_recording_rules_find(smooth: int) -> None:
    """Fed one window at a time it reports, as each run ends, what the rules applied to the whole
    recording's posteriors report (posteriors in float64, so no sum lands on the threshold
    differently); ``detect_all``, the same rules at once, reports the same detections, values
    equal to the bit."""
    g = torch.Generator().manual_seed(smooth)
    total = 0
    for trial in range(20):
        n = int(torch.randint(1, 300, (1,), generator=g))
        steady = torch.randn(n // 8 + 1, len(CLASSES), generator=g, dtype=torch.float64).repeat_interleave(8, 0)[:n]
        logits = 4 * steady + torch.randn(n, len(CLASSES), generator=g, dtype=torch.float64)  # words last a while
        probs = torch.softmax(logits, dim=1)
        starts = [i * 1600 for i in range(n)]
        refractory = [0.0, 0.5, 1.0][trial % 3]
        detector = LiveDetector(CLASSES, 0.5, smooth, refractory, ignore=(SILENCE, UNKNOWN))
        live = [d for s, p in zip(starts, probs) for d in detector.push(s, p)] + detector.finish()
        expected = _reference_detect(CLASSES, starts, probs, 0.5, smooth, refractory)
        assert sorted((d.seconds, d.keyword) for d in live) == expected
        at_once = detect_all(CLASSES, starts, probs, 0.5, smooth, refractory, ignore=(SILENCE, UNKNOWN))
        in_order = lambda found: sorted(found, key=lambda d: (d.seconds, d.keyword))  # noqa: E731
        assert in_order(at_once) == in_order(live)  # probabilities too
        total += len(expected)
    assert total > 100


@pytest.fixture(scope="module")
def spoken() -> np.ndarray:
    """Eight words by eSpeak NG voices with pauses and faint noise, keywords among them."""
    from dszoo.audio.synth import speakers, synthesizer

    synth, voices = synthesizer(16000), speakers(3, seed=5)
    rng = np.random.default_rng(0)
    parts = []
    for i, word in enumerate(["yes", "house", "no", "stop", "bird", "go", "left", "up"]):
        parts += [np.zeros(int(16000 * rng.uniform(0.4, 1.0)), np.float32), synth.say(word, voices[i % 3])]
    wave = np.concatenate(parts + [np.zeros(16000, np.float32)]).astype(np.float32)
    return np.clip(wave + rng.standard_normal(len(wave)).astype(np.float32) * 0.003, -1, 1)


def _pcm(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def _wav_header(rate: int = 16000, bits: int = 16, channels: int = 1, data_size: int = 0) -> bytes:
    """A WAV header as a recorder writes it before it knows the length (sizes 0)."""
    block = channels * bits // 8
    return (b"RIFF" + struct.pack("<I", 0) + b"WAVE" + b"fmt " + struct.pack("<IHHIIHH", 16, 1, channels, rate,
                                                                                rate * block, block, bits)
            + b"data" + struct.pack("<I", data_size))


SPOT = [sys.executable, "-c", "from dszoo.commands.spot import cli; raise SystemExit(cli())"]


def _heard(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.endswith(tuple("0123456789")) and " s " in line]


def test_live_input_is_heard_as_the_finished_file_is(spoken: np.ndarray, tmp_path: Path) -> None:
    """``dszoo-spot -`` on raw PCM and on a WAV stream from standard input, and ``--follow`` on a
    WAV file while it is written, each report the keywords the scan of the whole recording
    finds, at the same times, one line each as it is heard; the stream path for a streaming
    spotter, the windowed one for the shipped spotter."""
    pcm = _pcm(spoken)
    audio = np.frombuffer(pcm, "<i2").astype(np.float32) / 32768
    shipped = load_spotter()
    expected = [f"{d.seconds:.2f} s {d.keyword} {d.probability:.2f}" for d in shipped.scan(audio)]
    assert [line.split()[2] for line in expected] == ["yes", "no", "stop", "go", "left", "up"]
    raw = subprocess.run([*SPOT, "-"], input=pcm, capture_output=True, timeout=120)
    assert raw.returncode == 0, raw.stderr
    out = raw.stdout.decode()
    assert out.splitlines()[0] == "listening to standard input (a 1 s window at a time, a window every 100 ms); " \
                                  "Ctrl-C stops"
    assert _heard(out) == expected and out.splitlines()[-1] == "standard input (9.8 s): 6 keywords heard"

    streaming = _spotter("ds_cnn_s_stream", {})
    keyword_peaks = streaming.window_posteriors(audio)[1][:, 2:].max(dim=1).values
    streaming.threshold = round(float(keyword_peaks.quantile(0.8)), 2)  # where this random network hears words
    path = tmp_path / "stream.safetensors"
    save_spotter(streaming, path)
    expected = [f"{d.seconds:.2f} s {d.keyword} {d.probability:.2f}" for d in load_spotter(path).scan(audio)]
    assert len(expected) >= 2
    wav = subprocess.run([*SPOT, str(path), "-"], input=_wav_header() + pcm, capture_output=True, timeout=120)
    assert wav.returncode == 0, wav.stderr
    assert "(a 20 ms hop at a time, a window every 40 ms)" in wav.stdout.decode().splitlines()[0]
    assert _heard(wav.stdout.decode()) == expected

    growing = tmp_path / "growing.wav"
    growing.write_bytes(_wav_header())
    proc = subprocess.Popen([*SPOT, "--follow", str(growing), "--idle-seconds", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def record() -> None:  # a recorder writing 100 ms pieces (of an odd byte count) in real time's order
        with open(growing, "ab") as fh:
            for i in range(0, len(pcm), 3201):
                fh.write(pcm[i:i + 3201])
                fh.flush()
                time.sleep(0.005)

    writer = threading.Thread(target=record)
    writer.start()
    out, err = proc.communicate(timeout=120)
    writer.join()
    assert proc.returncode == 0, err
    assert _heard(out) == [f"{d.seconds:.2f} s {d.keyword} {d.probability:.2f}" for d in shipped.scan(audio)]


def test_a_live_stream_is_heard_in_bounded_memory() -> None:
    """Four times the audio, the same memory NumPy holds, for the windowed scan and the stream."""
    from test_speech_data import _peak_numpy_bytes

    def noise(seconds: int) -> Iterator[np.ndarray]:
        rng = np.random.default_rng(0)
        for _ in range(seconds * 10):
            yield (rng.standard_normal(1600) * 0.05).astype(np.float32)

    for spotter in (load_spotter(), _spotter("ds_cnn_s_stream", {})):
        peaks = {s: _peak_numpy_bytes(lambda s=s: list(spotter.listen(noise(s)))) for s in (15, 60)}
        assert peaks[60] < 1.1 * peaks[15] and peaks[60] < 4 * 2**20, peaks


@pytest.mark.parametrize("stdin,message", [
    (_wav_header(rate=44100), "error: standard input: a live stream at 44100 Hz; it must be at 16000 Hz "
                              "(arecord -r 16000, sox ... -r 16000)"),
    (_wav_header(bits=8), "error: standard input: a live WAV stream must be 16-bit PCM, got format 1 with 8 bits"),
    (b"RIFF\0\0\0\0WAVE" + b"fmt ", "error: standard input: ended inside its WAV header (a chunk header)"),
])
def test_bad_live_streams_are_one_line(stdin: bytes, message: str, monkeypatch: pytest.MonkeyPatch) -> None:
    read, write = os.pipe()
    os.write(write, stdin)
    os.close(write)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(io.FileIO(read, "rb"))))
    res = run_in_process("spot", ["-"])
    assert res.returncode == 2 and res.stderr == message + "\n"


def test_live_options_that_cannot_work_are_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.wav"
    os.mkfifo(fifo)
    res = run_in_process("spot", ["--follow", str(fifo)])  # refused without opening it: nothing hangs
    assert res.returncode == 2 and res.stderr == f"error: --follow {fifo}: is a FIFO (named pipe), not a regular file\n"
    for args in (["-", "other.wav"], ["--follow", "a.wav", "b.wav"]):
        res = run_in_process("spot", args)
        assert res.returncode == 2 and res.stderr.startswith("error: ") and "listens to one live stream; got 2" in res.stderr


def test_the_streaming_benchmark_counts_a_hops_work() -> None:
    """One hop of ds_cnn_s_stream: half a stem row (12,800 MACs every second hop) and half a row
    of each of its four separable blocks (2,880 depthwise + 20,480 pointwise); a window is the
    closed form's 1,658,368."""
    from dszoo import plan_model
    from dszoo.measurement.streaming_benchmark import streaming_benchmark, streaming_table

    result = streaming_benchmark(hops=60, repeats=1)
    assert result["stream_macs_per_hop"] == (12800 + 4 * (2880 + 20480)) / 2 == 53120
    assert result["window_macs"] == plan_model(get_model_config("ds_cnn_s_stream")).macs == 1_658_368
    assert result["macs_ratio_at_stream_hop"] == pytest.approx(result["window_macs"] / 2 / 53120)
    rows = result["rows"]
    assert rows[1]["per_20ms_ms"] == pytest.approx(rows[1]["ms"] / 2)
    assert rows[2]["per_20ms_ms"] == pytest.approx(rows[2]["ms"] / 5)
    assert "| ds_cnn_s_stream streamed, per 20 ms hop |" in streaming_table(result)
