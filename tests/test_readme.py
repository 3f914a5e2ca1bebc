"""README.md is the front door: its test command is exactly the one CI runs."""
from __future__ import annotations

import re
from pathlib import Path

from models import list_models

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in l]
    assert len(ci_lines) == 1
    assert ci_lines[0] in README.split("## ")[1], "the CI command must be a quick-start command"


def test_reference_table_lists_every_model() -> None:
    table = README[README.index("## Reference numbers"):]
    listed = set(re.findall(r"^\| `([a-z0-9_]+)`", table, flags=re.M))
    assert set(list_models()) <= listed


def test_reliability_section_counts_are_current() -> None:
    import hypothesis
    import test_fuzz_configs as fuzz  # the tests folder is on sys.path under pytest
    import test_hostile_inputs as hostile

    section = README[README.index("## Reliability"):README.index("## Layout")]
    given = [f for m in (fuzz, hostile) for f in vars(m).values() if getattr(f, "is_hypothesis_test", False)]
    ci, thorough = (hypothesis.settings.get_profile(p).max_examples for p in ("ci", "thorough"))
    assert f"{len(given)} of them drawing {ci} cases each in the default run ({len(given) * ci} in all" in section
    assert f"draws {thorough:,} each" in section
    assert f"{len(hostile.SCRIPT_CASES)} bad command lines across all five" in section
