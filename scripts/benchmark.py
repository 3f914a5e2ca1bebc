#!/usr/bin/env python
"""``dszoo-benchmark`` without installing the commands: ``python scripts/benchmark.py --help``.

The command lives in ``models/commands/benchmark.py``; this file only runs it.
"""
import sys

from models.commands.benchmark import cli

if __name__ == "__main__":
    sys.exit(cli())
