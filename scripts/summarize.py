#!/usr/bin/env python
"""``dszoo-summarize`` without installing the commands: ``python scripts/summarize.py --help``.

The command lives in ``models/commands/summarize.py``; this file only runs it.
"""
import sys

from models.commands.summarize import cli

if __name__ == "__main__":
    sys.exit(cli())
