"""Command-line fronts over the library, one module per command, each with ``main(argv)``
(errors propagate) and ``cli(argv)`` (errors as one ``error:`` line, exit code 2). They are
installed as ``dszoo-<name>`` console commands, run by ``python -m dszoo <name>`` and by
``scripts/<name>.py``."""
from __future__ import annotations

import importlib
from typing import Callable, Optional, Sequence

__all__ = ["COMMANDS", "command"]

COMMANDS: dict[str, str] = {
    "train": "fine-tune a model (default: mobilenet_v1_025 on bundled digits)",
    "summarize": "layer table, params, MACs and what separable convs save",
    "export": "TorchScript, ONNX or .pt2 files, verified against eager",
    "convert-weights": "timm checkpoints to dszoo safetensors",
    "benchmark": "timings against timm, the optimized path and the machine's ceiling",
    "make-speech-data": "a Speech Commands stand-in synthesised offline (eSpeak NG, Flite, Festival)",
    "spot": "keywords in WAV files with a trained keyword model",
    "eval-speech": "a keyword model scored on every clip of a folder, per engine and voice",
    "make-recordings": "long recordings with keywords at known times, from held-out voices",
    "leave-one-engine-out": "a keyword recipe trained without each speech engine and scored on it",
}
"""Every command, by its console name (``dszoo-<name>``), with what it does."""


def command(name: str) -> Callable[[Optional[Sequence[str]]], int]:
    """The ``cli`` function of command ``name`` (imported only when asked for: each pulls in
    what it needs)."""
    if name not in COMMANDS:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name.replace('-', '_')}").cli
