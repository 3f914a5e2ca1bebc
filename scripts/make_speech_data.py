#!/usr/bin/env python
"""``dszoo-make-speech-data`` without installing the commands: ``python scripts/make_speech_data.py --help``.

The command lives in ``models/commands/make_speech_data.py``; this file only runs it.
"""
import sys

from models.commands.make_speech_data import cli

if __name__ == "__main__":
    sys.exit(cli())
