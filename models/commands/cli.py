"""Command-line plumbing shared by every command: bad input ends in one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import unicodedata
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional, Sequence

from ..config import ConfigError
from ..errors import RunError, UsageError
from ..registry import UnknownModelError

__all__ = [
    "ArgumentParser",
    "RunError",
    "UsageError",
    "bounded_int",
    "fraction",
    "new_output_file",
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "probability",
    "run_cli",
]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors raised as ``UsageError``: one line, not usage + error."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        """argparse's, refusing empty values: ``--out-dir ""`` would mean the current folder."""
        parsed, rest = super().parse_known_args(args, namespace)
        for action in self._actions:
            value = getattr(parsed, action.dest, None)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, str) and not v.strip() for v in values):
                name = action.option_strings[-1] if action.option_strings else action.dest.upper()
                self.error(f"{name}: must not be empty")
        return parsed, rest


MAX_INT = 2**31 - 1
"""The largest integer an option takes: counts beyond it overflow torch's own integers."""


def _number(kind: type, text: str, ok: Callable[[float], bool], allowed: str) -> float:
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
    if kind is int and value > MAX_INT:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_INT:,}, got {text!r}")
    return value


def bounded_int(text: str, high: int) -> int:
    """An int from 1 to ``high``, or ``argparse.ArgumentTypeError`` saying so."""
    return int(_number(int, text, lambda v: 1 <= v <= high, f"an integer from 1 to {high}"))


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    return int(_number(int, text, lambda v: v >= 1, "a positive integer"))


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    return int(_number(int, text, lambda v: v >= 0, "an integer >= 0"))


def finite_float(text: str) -> float:
    """argparse type: any finite float (not nan or inf)."""
    return _number(float, text, lambda v: True, "a finite number")


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    return _number(float, text, lambda v: v > 0, "a number > 0")


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _number(float, text, lambda v: v >= 0, "a number >= 0")


def fraction(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    return _number(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def probability(text: str) -> float:
    """argparse type: a float in [0, 1]."""
    return _number(float, text, lambda v: 0 <= v <= 1, "a number in [0, 1]")


def new_output_file(path: str, overwrite: bool, flag: str, suffixes: Sequence[str] = ()) -> Path:
    """Check, before any work, that ``path`` may be written: the right suffix, an existing file
    only with ``--overwrite``, not a folder. Raises ``UsageError`` naming ``flag``."""
    out = Path(path)
    if suffixes and not str(out).endswith(tuple(suffixes)):
        raise UsageError(f"{flag} {path}: must end in {' or '.join(suffixes)}")
    if out.is_dir():
        raise UsageError(f"{flag} {path}: is a folder; give a file name")
    if out.exists() and not overwrite:
        raise UsageError(f"{flag} {path}: exists; pass --overwrite to replace it")
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise UsageError(f"{flag} {path}: {parent} is a file, not a folder")
    return out


# Errors that describe the user's input or machine (a read-only folder, a full disk, a name too
# long); anything else is a bug and keeps its traceback.
USER_ERRORS = (UsageError, ConfigError, UnknownModelError, ValueError, OSError)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ConfigError):
        return "; ".join(f"{exc.source}: {p}" for p in exc.problems)
    if isinstance(exc, OSError) and exc.strerror and exc.filename:
        where = f"{exc.filename}" + (f" -> {exc.filename2}" if exc.filename2 else "")
        return f"{where}: {exc.strerror}"
    return " ".join(str(exc).split())


_KEPT_CONTROLS = {"\n", "\r", "\t"}  # lines, progress bars' returns, tables
_ESCAPED_CATEGORIES = ("Cc", "Cf", "Cs")  # control, format, surrogate


def escape_controls(text: str) -> str:
    """``text`` with every control and format character but newline, carriage return and tab
    written as a Python escape (``\\x1b``, ``\\u202e``): names read from files and folders
    (class names, paths) cannot send escape sequences to a terminal or reorder what it shows. So
    are lone surrogates (``\\udce9``: Python's stand-in for a file name's byte that is not UTF-8),
    which a UTF-8 terminal cannot print at all."""
    return "".join(c if c in _KEPT_CONTROLS or unicodedata.category(c) not in _ESCAPED_CATEGORIES
                   else ascii(c)[1:-1] for c in text)


class _Escaping:
    """A text stream that writes through ``escape_controls`` to the stream it wraps."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(escape_controls(text))

    def __getattr__(self, name: str) -> Any:  # flush, isatty, encoding ... of the wrapped stream
        return getattr(self._stream, name)


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)`` with everything it prints passed through ``escape_controls``; user
    errors print ``error: ...`` on one line and return 2."""
    with contextlib.redirect_stdout(_Escaping(sys.stdout)), contextlib.redirect_stderr(_Escaping(sys.stderr)):
        return _run_cli(main, argv)


READER_GONE = 141
"""The exit status when whoever read the output stopped reading (``| head``): a shell's for a
command ended by SIGPIPE, 128 + 13."""


def _stdout_fd() -> int:
    """The process's standard output descriptor (the one ``sys.stdout`` wrappers write through)."""
    return sys.__stdout__.fileno() if sys.__stdout__ is not None else 1


def _stdout_reader_gone() -> bool:
    """Whether standard output is a pipe or socket nobody reads any more (``| head`` has exited)."""
    import select

    try:
        poller = select.poll()
        poller.register(_stdout_fd(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError):
        return False


def _quiet_stdout() -> None:
    """Point standard output at /dev/null, so that Python's flush at exit finds no broken pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, _stdout_fd())
    os.close(devnull)


def _run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]]) -> int:
    try:
        return main(argv)
    except BrokenPipeError as exc:
        if not _stdout_reader_gone():
            print(f"error: {_one_line(exc)}", file=sys.stderr)
            return 2
        _quiet_stdout()  # the reader has what it wanted: nothing to say, as `yes | head` says nothing
        return READER_GONE
    except USER_ERRORS as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
