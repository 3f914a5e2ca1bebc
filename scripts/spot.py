#!/usr/bin/env python
"""``dszoo-spot`` without installing the commands: ``python scripts/spot.py --help``.

The command lives in ``models/commands/spot.py``; this file only runs it.
"""
import sys

from models.commands.spot import cli

if __name__ == "__main__":
    sys.exit(cli())
