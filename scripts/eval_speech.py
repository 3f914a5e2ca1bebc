#!/usr/bin/env python
"""``dszoo-eval-speech`` from a checkout, installed or not: ``python scripts/eval_speech.py --help``.

The command lives in ``models/commands/eval_speech.py`` (``dszoo.commands.eval_speech``); this file only runs it.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hubconf  # noqa: E402,F401  (imports dszoo from this checkout)
from dszoo.commands.eval_speech import cli  # noqa: E402

if __name__ == "__main__":
    sys.exit(cli())
