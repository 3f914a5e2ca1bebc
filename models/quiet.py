"""Libraries' notices that are not the user's business kept off the user's terminal.

Exporting to OpenVINO traces the model with TorchScript (deprecation notices, tracer warnings
about the input checks it keeps as constants), importing ExecuTorch's quantizer makes torch log
an Enum registration, ExecuTorch's runtime logs its CPU probing from C++: none of it is about
the user's model, and a command's own output is one line of result. Errors still pass.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

__all__ = ["LIBRARY_LOGGERS", "libraries_quiet"]

LIBRARY_LOGGERS = ("torch.utils._pytree", "torch.utils.cpp_extension", "timm")
"""Loggers whose warnings are libraries talking among themselves (torchao's Enum registration,
"No CUDA runtime is found" on a CPU-only machine, timm's scheduler of one step)."""


@contextlib.contextmanager
def libraries_quiet(native: bool = False) -> Iterator[None]:
    """Within: Python warnings and the ``LIBRARY_LOGGERS`` below ERROR are silenced; with
    ``native`` the process's standard error (file descriptor 2, where C++ libraries log) is
    held back too, and written out after all if the block raises, so no error is lost."""
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _native_stderr_held() if native else contextlib.nullcontext():
                yield
    finally:
        for log, level in zip(loggers, levels):
            log.setLevel(level)


@contextlib.contextmanager
def _native_stderr_held() -> Iterator[None]:
    """Standard error held in a temporary file, both file descriptor 2 and Python's
    ``sys.stderr`` (ExecuTorch logs from C++ through either); its text is written out only if
    the block raises."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no descriptor 2 to hold (an embedding application's)
        yield
        return
    with tempfile.TemporaryFile() as held, open(held.fileno(), "w", encoding="utf-8", errors="replace",
                                                closefd=False) as held_text:
        os.dup2(held.fileno(), 2)
        failed = False
        try:
            with contextlib.redirect_stderr(held_text):
                yield
        except BaseException:
            failed = True
            raise
        finally:
            held_text.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                held.seek(0)
                os.write(2, held.read()[-20_000:])
