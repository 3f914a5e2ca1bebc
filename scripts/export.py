#!/usr/bin/env python
"""``dszoo-export`` without installing the commands: ``python scripts/export.py --help``.

The command lives in ``models/commands/export.py``; this file only runs it.
"""
import sys

from models.commands.export import cli

if __name__ == "__main__":
    sys.exit(cli())
