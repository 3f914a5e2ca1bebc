"""Errors that describe what a user asked for or what a run met, shared by the library and its
commands (``dszoo.commands`` prints each as one line)."""
from __future__ import annotations

__all__ = ["RunError", "UsageError"]


class UsageError(Exception):
    """A problem with what the user asked for, reported as one line (exit code 2)."""


class RunError(Exception):
    """A run that had to stop (e.g. a diverging loss), reported as one line (exit code 1)."""
