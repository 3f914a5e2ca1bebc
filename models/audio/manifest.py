"""A generated dataset's bookkeeping: ``manifest.csv`` (one row a clip: its engine, voice,
speaker and text) and the marker of a generation that did not finish. Read by everything that
reads speech data, written by ``make_data``."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from ..files import atomic_path, regular_file

__all__ = ["GENERATING", "MANIFEST", "interrupted_dataset", "is_respelled", "read_manifest", "write_manifest"]

MANIFEST = "manifest.csv"
"""Every clip the generator wrote, one row each: file, word, engine, voice, speaker, setting, and
the text the engine was given (the word, or one of its ``RESPELLINGS``)."""
GENERATING = ".dszoo-generating"
"""Written first and removed last: a folder holding it is a dataset whose generation did not finish."""


def interrupted_dataset(root: Path) -> bool:
    """Whether ``root`` is a dataset the generator began and did not finish."""
    return (root / GENERATING).exists()


def write_manifest(path: Path, rows: list[tuple[str, ...]]) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(("file", "word", "engine", "voice", "speaker", "setting", "text"))
    writer.writerows(rows)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text.getvalue())


def is_respelled(row: dict[str, str]) -> bool:
    """Whether a manifest row is a clip of a respelled keyword (training data, never scored);
    manifests without the ``text`` column, and clips without a row (``{}``), hold none."""
    return row.get("text", "") not in ("", row.get("word"))


def read_manifest(root: Path) -> dict[str, dict[str, str]]:
    """``manifest.csv`` of a generated dataset by file (``word/name.wav``); empty when the folder
    has none (the real Speech Commands)."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    with open(regular_file(path, "manifest"), newline="") as fh:
        return {row["file"]: row for row in csv.DictReader(fh)}
