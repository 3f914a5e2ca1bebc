"""Shared command-line plumbing: bad input ends in one line on stderr and exit code 2."""
from __future__ import annotations

import sys
from typing import Callable, Optional, Sequence

from .config import ConfigError
from .registry import UnknownModelError

__all__ = ["UsageError", "run_cli"]


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line."""


# Errors that describe the user's input; anything else is a bug and keeps its traceback.
USER_ERRORS = (UsageError, ConfigError, UnknownModelError, ValueError, FileNotFoundError, PermissionError)


def run_cli(main: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; user errors print ``error: ...`` on one line and return 2."""
    try:
        return main(argv)
    except USER_ERRORS as exc:
        message = " ".join(str(exc).split()) if not isinstance(exc, ConfigError) else "; ".join(
            f"{exc.source}: {p}" for p in exc.problems
        )
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
