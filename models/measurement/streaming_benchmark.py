"""What a keyword stream costs: the stateful streaming model's work per 20 ms hop (an MFCC frame
and, on every row-stride-th hop, one row of each layer: ``audio.streaming``) against the
sliding-window scan's per 20 ms of audio (a whole 1 s window, MFCC and network, every hop of
the scan), both at batch 1 as a live stream runs them, in one run, medians of repeats. Each is
timed warm, among calls of its own kind: a call after a pause (as live audio comes) also wakes
the threads and caches, which on this machine cost a window more than its compute.

Compute alone bounds the ratio: a scan at a hop of ``h`` frames computes every frame and layer
row about ``49 / h`` times (9.8 at 100 ms), the stream once; the valid rows of a streaming
model make its window cheaper still (``macs`` columns).
"""
from __future__ import annotations

import statistics
from typing import Callable

import numpy as np
import torch

from ..audio.mfcc import MFCC
from ..audio.streaming import FrameMFCC, StreamingNetwork, stream_posteriors
from ..profile import count_macs
from ..registry import create_model
from .benchmark import machine_info, timed_interleaved

__all__ = ["streaming_benchmark", "streaming_table"]

SCAN_HOP_SECONDS = 0.1  # dszoo-spot's scan of a model that cannot stream


def streaming_benchmark(model_name: str = "ds_cnn_s_stream", mfcc: str = "narrowband_stream",
                        windowed_name: str = "ds_cnn_s", windowed_mfcc: str = "narrowband", hops: int = 250, repeats: int = 15,
                        log: Callable[[str], None] = lambda s: None) -> dict:
    """Time ``model_name`` (random weights: the cost does not depend on them) streamed a hop at a
    time, the same model's window, and ``windowed_name``'s window (the scan of a model that
    cannot stream, e.g. the shipped spotter's), interleaved; per-hop and per-20-ms figures."""
    torch.manual_seed(0)
    model = create_model(model_name).eval()
    windowed = create_model(windowed_name).eval()
    front, windowed_front = MFCC(mfcc), MFCC(windowed_mfcc)
    network, frames = StreamingNetwork(model, front.frames), FrameMFCC(front)
    hop = front.hop
    rng = np.random.default_rng(0)
    audio = (rng.standard_normal(hop * (hops + 100)) * 0.1).astype(np.float32)
    chunks = [audio[i:i + hop] for i in range(0, len(audio), hop)]
    clip = torch.from_numpy(audio[:16000])

    def stream() -> None:  # hops of 20 ms through the live path, from a cold stream (reset) to the last
        for _ in stream_posteriors(network, frames, chunks[:hops], 16000):
            pass

    def window_of(net: torch.nn.Module, mfcc_of: MFCC) -> Callable[[], object]:
        def run() -> object:
            with torch.no_grad():
                return net(mfcc_of(clip))
        return run

    log(f"timing {hops} hops of {model_name} streamed, and one window of {model_name} and {windowed_name}")
    times = timed_interleaved({"stream": stream}, repeats)  # each kind warm (timed with its own kind)
    times.update(timed_interleaved({"window": window_of(model, front), "windowed": window_of(windowed, windowed_front)},
                                   repeats))
    per_hop = statistics.median(times["stream"]) / hops
    window, other = statistics.median(times["window"]), statistics.median(times["windowed"])
    hop_seconds = hop / 16000
    stream_hop = network.row_stride * hop_seconds  # the stream's windows are this far apart
    rows = [
        {"what": f"{model_name} streamed, per 20 ms hop", "ms": 1e3 * per_hop, "per_20ms_ms": 1e3 * per_hop},
        {"what": f"{model_name} scanned, a window every {stream_hop * 1e3:.0f} ms (the stream's posteriors)",
         "ms": 1e3 * window, "per_20ms_ms": 1e3 * window * hop_seconds / stream_hop},
        {"what": f"{model_name} scanned, a window every {SCAN_HOP_SECONDS * 1e3:.0f} ms", "ms": 1e3 * window,
         "per_20ms_ms": 1e3 * window * hop_seconds / SCAN_HOP_SECONDS},
        {"what": f"{windowed_name} ({windowed_mfcc}) scanned, a window every {SCAN_HOP_SECONDS * 1e3:.0f} ms",
         "ms": 1e3 * other, "per_20ms_ms": 1e3 * other * hop_seconds / SCAN_HOP_SECONDS},
    ]
    for row in rows:
        row["ratio"] = row["per_20ms_ms"] / rows[0]["per_20ms_ms"]
    window_macs = count_macs(model, tuple(model.cfg.input_size))
    hop_macs = sum(u.macs / u.rows_apart for u in network.units)  # each unit's row, as often as it comes
    return {"machine": machine_info(), "threads": torch.get_num_threads(), "repeats": repeats, "hops": hops,
            "rows": rows, "window_macs": window_macs, "stream_macs_per_hop": hop_macs,
            "macs_ratio_at_scan_hop": window_macs * hop_seconds / SCAN_HOP_SECONDS / hop_macs,
            "macs_ratio_at_stream_hop": window_macs * hop_seconds / stream_hop / hop_macs}


def streaming_table(result: dict) -> str:
    """``streaming_benchmark``'s result as a markdown table with its machine."""
    m = result["machine"]
    lines = [f"{m['cpu']}, {result['threads']} threads, torch {m['torch']}; medians of {result['repeats']} runs "
             f"({result['hops']} hops a run for the stream)", "",
             "| | ms a call | ms per 20 ms of audio | x the stream's |", "|---|---:|---:|---:|"]
    lines += [f"| {r['what']} | {r['ms']:.3f} | {r['per_20ms_ms']:.4f} | {r['ratio']:.1f} |" for r in result["rows"]]
    lines += ["", f"Compute: a window {result['window_macs']:,} MACs, the stream {result['stream_macs_per_hop']:,.0f} "
              f"MACs a hop (its convs' rows); the scan at 100 ms does {result['macs_ratio_at_scan_hop']:.1f}x the "
              f"stream's MACs, at the stream's own hop {result['macs_ratio_at_stream_hop']:.1f}x."]
    return "\n".join(lines)
