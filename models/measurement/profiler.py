"""Where the time goes: ``torch.profiler``'s top operators, and the oneDNN primitives a call
runs, read from oneDNN's own verbose log (which names the kernels inside fused partitions)."""
from __future__ import annotations

import ctypes
import os
import re
import statistics
import sys
import tempfile
import time
from typing import Callable

import torch

from ..profile import timed

__all__ = ["describe_onednn_problem", "onednn_primitives", "top_operators"]


def top_operators(fn: Callable[[], object], runs: int = 3, top: int = 10) -> list[dict]:
    """The ``top`` operators by self CPU time over ``runs`` calls of ``fn`` (``torch.profiler``,
    grouped by operator and input shapes), per call: name, input shapes, calls, self ms and
    share of the total self time. ``fn`` is called once first, unprofiled, as a warm-up."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(runs):
            fn()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    return [{"operator": e.key, "input_shapes": [list(shape) for shape in e.input_shapes if shape],
             "calls": e.count / runs, "self_ms": e.self_cpu_time_total / runs / 1e3,
             "share": e.self_cpu_time_total / total}
            for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]]


_CONV_PROBLEM = re.compile(r"(?:g(?P<g>\d+))?mb\d+_ic(?P<ic>\d+)oc(?P<oc>\d+)_ih(?P<ih>\d+)oh\d+"
                           r"kh(?P<kh>\d+)sh(?P<sh>\d+)dh\d+ph\d+_iw(?P<iw>\d+)ow\d+kw(?P<kw>\d+)sw\d+dw\d+pw\d+")
_FUSED_DEPTHWISE = re.compile(r"dw:k(\d+)s(\d+)p\d+")


def describe_onednn_problem(kind: str, problem: str, post_ops: str = "") -> str:
    """A readable name for a oneDNN primitive's problem descriptor, as its verbose log gives it:
    ``mb8_ic728oc728_ih19oh19kh1sh1dh0ph0_iw19ow19kw1sw1dw0pw0`` with post-op ``dw:k3s2p1`` reads
    "1x1 conv 728 -> 728 at 19x19 + depthwise 3x3 s2". Other primitives keep the descriptor."""
    conv = _CONV_PROBLEM.fullmatch(problem) if kind == "convolution" else None
    if conv is None:
        return f"{kind} {problem}"
    c = {k: int(v) if v else 0 for k, v in conv.groupdict().items()}
    stride = f" s{c['sh']}" if c["sh"] > 1 else ""
    if c["g"] > 1 and c["g"] == c["ic"] == c["oc"]:
        text = f"depthwise {c['kh']}x{c['kw']}{stride}, {c['ic']} channels at {c['ih']}x{c['iw']}"
    else:
        groups = f" ({c['g']} groups)" if c["g"] > 1 else ""
        text = f"{c['kh']}x{c['kw']} conv{stride} {c['ic']} -> {c['oc']}{groups} at {c['ih']}x{c['iw']}"
    for k, s in _FUSED_DEPTHWISE.findall(post_ops):
        text += f" + depthwise {k}x{k}" + (f" s{s}" if s != "1" else "")
    return text


def onednn_primitives(fn: Callable[[], object], runs: int = 3, top: int = 10) -> dict:
    """Where the time of ``fn`` goes inside oneDNN: every primitive it executes over ``runs``
    calls, from oneDNN's own verbose log (``torch.backends.mkldnn.verbose``), grouped by kind,
    implementation, problem and post-ops. Unlike ``torch.profiler``, which sees a fused oneDNN
    Graph partition as one opaque ``LlgaPartition_N`` row, this names each fused convolution
    and the kernel that ran it.

    Returns, per call: ``total_ms`` (all primitives), ``wall_ms`` (the whole logged call, so that
    total_ms / wall_ms is the share of time spent inside oneDNN even where the machine's speed
    drifts between runs), ``calls``, and the ``top`` groups by time, each with ``layer``,
    ``primitive``, ``implementation``, ``problem``, ``post_ops``, ``calls``, ``ms`` and ``share``
    of ``total_ms``. ``fn`` is called once first, unlogged. oneDNN writes its log to file
    descriptor 1, which is redirected while ``fn`` runs (so whatever ``fn`` prints is not
    shown). A torch built without oneDNN gives no groups and ``calls`` 0.
    """
    fn()
    if not torch.backends.mkldnn.is_available():
        return {"total_ms": 0.0, "wall_ms": statistics.mean(timed(fn, runs, warmup=0)) * 1e3, "calls": 0, "top": []}
    sys.stdout.flush()
    saved = os.dup(1)
    with tempfile.TemporaryFile(mode="w+b") as log:
        os.dup2(log.fileno(), 1)
        try:
            with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                start = time.perf_counter()
                for _ in range(runs):
                    fn()
                wall = time.perf_counter() - start
        finally:
            _libc_fflush()
            os.dup2(saved, 1)
            os.close(saved)
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines()
    groups: dict[tuple[str, str, str, str], list[float]] = {}
    for line in lines:  # onednn_verbose,v1,primitive,exec,cpu,KIND,IMPL,PROP,MEMORY,ATTRS,AUX,PROBLEM,MS
        f = line.split(",")
        i = f.index("primitive") if "primitive" in f else -1
        if i < 0 or f[i + 1:i + 2] != ["exec"] or len(f) < i + 11:
            continue
        kind, impl, attrs, problem, ms = f[i + 3], f[i + 4], f[i + 7], f[-2], float(f[-1])
        post_ops = next((a.split(":", 1)[1] for a in attrs.split() if a.startswith("attr-post-ops:")), "")
        groups.setdefault((kind, impl, problem, post_ops), []).append(ms)
    group_ms = {key: sum(times) for key, times in groups.items()}
    logged = sum(group_ms.values())
    rows = [{"layer": describe_onednn_problem(kind, problem, post_ops), "primitive": kind, "implementation": impl,
             "problem": problem, "post_ops": post_ops, "calls": len(groups[kind, impl, problem, post_ops]) / runs,
             "ms": ms / runs, "share": ms / (logged or 1.0)}
            for (kind, impl, problem, post_ops), ms in sorted(group_ms.items(), key=lambda kv: -kv[1])[:top]]
    return {"total_ms": logged / runs, "wall_ms": wall / runs * 1e3,
            "calls": sum(len(v) for v in groups.values()) / runs, "top": rows}


def _libc_fflush() -> None:
    """Flush C stdio buffers, where oneDNN's verbose log may sit before it reaches the file."""
    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError, TypeError):  # no C library to load by that name (Windows)
        pass
