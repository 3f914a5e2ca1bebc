#!/usr/bin/env python
"""``dszoo-export`` without installing the commands: ``python scripts/export.py --help``.

The command lives in ``models/commands/export.py``; this file only runs it.
"""
import sys

from models.commands.export import cli, main  # noqa: F401  (main: for tests that call it in-process)

if __name__ == "__main__":
    sys.exit(cli())
