#!/usr/bin/env python
"""``dszoo-train`` without installing the commands: ``python scripts/train.py --help``.

The command lives in ``models/commands/train.py``; this file only runs it.
"""
import sys

from models.commands.train import cli

if __name__ == "__main__":
    sys.exit(cli())
