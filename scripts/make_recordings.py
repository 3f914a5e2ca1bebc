#!/usr/bin/env python
"""``dszoo-make-recordings`` from a checkout, installed or not: ``python scripts/make_recordings.py --help``.

The command lives in ``models/commands/make_recordings.py`` (``dszoo.commands.make_recordings``); this file only runs it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hubconf  # noqa: E402,F401  (imports dszoo from this checkout)
from dszoo.commands.make_recordings import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
