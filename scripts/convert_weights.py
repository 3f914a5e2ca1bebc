#!/usr/bin/env python
"""``dszoo-convert-weights`` without installing the commands: ``python scripts/convert_weights.py --help``.

The command lives in ``models/commands/convert_weights.py``; this file only runs it.
"""
import sys

from models.commands.convert_weights import cli

if __name__ == "__main__":
    sys.exit(cli())
