"""Shared command-line plumbing: bad input ends in one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import sys
from typing import Callable, NoReturn, Optional, Sequence

from .config import ConfigError
from .registry import UnknownModelError

__all__ = ["ArgumentParser", "RunError", "UsageError", "run_cli"]


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line (exit code 2)."""


class RunError(Exception):
    """A run that had to stop (e.g. a diverging loss), reported as one line (exit code 1)."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors raised as ``UsageError``: one line, not usage + error."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        raise UsageError(f"{message} (see --help)")


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
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
