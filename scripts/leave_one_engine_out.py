#!/usr/bin/env python
"""``dszoo-leave-one-engine-out`` from a checkout, installed or not: ``python scripts/leave_one_engine_out.py --help``.

The command lives in ``models/commands/leave_one_engine_out.py`` (``dszoo.commands.leave_one_engine_out``); this file only runs it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hubconf  # noqa: E402,F401  (imports dszoo from this checkout)
from dszoo.commands.leave_one_engine_out import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
