"""README.md is the front door: its test command is exactly the one CI runs, every Python
example runs as written, and the figures it and docs/ give are current."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from dszoo import list_models
from dszoo.commands import COMMANDS

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
GUIDES = ("README.md", "docs/training.md", "docs/deployment.md", "docs/keyword_spotting.md", "docs/configs.md")
"""The pages whose examples a user copies: the README and the user guides of docs/README.md."""
EXAMPLES = [(page, i + 1, code) for page in GUIDES
            for i, code in enumerate(re.findall(r"^```python\n(.*?)^```", (REPO / page).read_text(), flags=re.M | re.S))]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci_lines = [l for l in (REPO / ".ci" / "run").read_text().splitlines() if "pytest" in l]
    assert len(ci_lines) == 1
    command = ci_lines[0].removesuffix(" --durations=15")  # CI also lists the slowest tests
    assert command in README.split("## ")[1], "the CI command must be a quick-start command"


def test_the_guides_have_their_python_examples() -> None:
    counts = {page: sum(1 for p, _, _ in EXAMPLES if p == page) for page in GUIDES}
    assert counts == {"README.md": 4, "docs/training.md": 1, "docs/deployment.md": 4, "docs/keyword_spotting.md": 1,
                      "docs/configs.md": counts["docs/configs.md"]}


def test_the_guides_are_listed_in_the_docs_contents() -> None:
    contents = (REPO / "docs" / "README.md").read_text()
    assert all(f"({Path(page).name})" in contents for page in GUIDES if page.startswith("docs/"))
    assert {f"({p.name})" for p in (REPO / "docs").glob("*.md") if p.name != "README.md"} <= set(
        re.findall(r"\([a-z_]+\.md\)", contents))


@pytest.mark.parametrize("page, number, code", EXAMPLES, ids=[f"{p}-{n}" for p, n, _ in EXAMPLES])
def test_python_example_runs_as_written(page: str, number: int, code: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Each ``python`` block of the README and the user guides, run on its own in an empty folder."""
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{page}, python example {number}", "exec"), {"__name__": "__readme__"})  # our own text


def test_readme_fits_a_front_door() -> None:
    assert len(README.splitlines()) <= 200  # measurements and experiments belong in docs/


def test_commands_named_in_the_readme_exist() -> None:
    named = set(re.findall(r"\bdszoo-([a-z-]+)", README)) - {"COMMAND"}
    assert named and named <= set(COMMANDS), named - set(COMMANDS)
    assert set(COMMANDS) <= named, "every command is shown in the README"


def test_reference_table_lists_every_model() -> None:
    table = (REPO / "docs" / "models.md").read_text()
    first_cells = re.findall(r"^\| ([^|]*)\|", table, flags=re.M)
    listed = {name for cell in first_cells for name in re.findall(r"`([a-z0-9_]+)`", cell)}
    assert set(list_models()) <= listed


def test_reliability_counts_are_current() -> None:
    import hypothesis
    import test_fuzz_configs as fuzz  # the tests folder is on sys.path under pytest
    import test_hostile_inputs as hostile

    text = (REPO / "docs" / "reliability.md").read_text()
    given = [f for m in (fuzz, hostile) for f in vars(m).values() if getattr(f, "is_hypothesis_test", False)]
    ci, thorough = (hypothesis.settings.get_profile(p).max_examples for p in ("ci", "thorough"))
    assert f"{len(given)} of them drawing {ci} cases each in the default run ({len(given) * ci} in all" in text
    assert f"draws {thorough:,} each" in text
    assert f"{len(hostile.SCRIPT_CASES)} bad command lines across all five" in text
    import test_reliability as reliability

    def cases(fn: object) -> int:
        n = 1
        for mark in getattr(fn, "pytestmark", []):
            if mark.name == "parametrize":
                n *= len(mark.args[1])
        return n

    tests = [f for name, f in vars(reliability).items() if name.startswith("test_") and callable(f)]
    assert f"({sum(map(cases, tests))} test cases in all" in text


def _readme_commands() -> list[tuple[str, list[str]]]:
    """The README's examples in order: ("python", [its text]) or ("bash", the words of one command)."""
    import shlex

    out: list[tuple[str, list[str]]] = []
    for kind, body in re.findall(r"^```(bash|python)\n(.*?)^```", README, flags=re.M | re.S):
        if kind == "python":
            out.append((kind, [body]))
            continue
        for line in body.replace("\\\n", " ").splitlines():
            for command in line.split("#", 1)[0].split("&&"):
                words = shlex.split(command)
                if words:
                    out.append((kind, [w.removeprefix(".venv/bin/") for w in words]))
    return out


READS = ("--pretrained", "--resume", "--data-dir")
WRITES = ("--out", "--json", "--plot", "--profile", "--markdown")


def test_readme_examples_run_top_to_bottom() -> None:
    """Every file an example reads was made by an example above it (DIR-style placeholders
    aside), and every file the examples leave in the checkout's root is ignored by git."""
    made: list[str] = []
    runs = 0
    for kind, words in _readme_commands():
        if kind == "python":
            made += re.findall(r"""torch\.save\(.*["']([^"']+)["']\)""", words[0])
            continue
        opts = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
        positional = [w for i, w in enumerate(words) if not w.startswith("-") and not words[i - 1].startswith("--")]
        command = words[0].rsplit("/", 1)[-1]
        reads = [opts[o] for o in READS if o in opts]
        if command == "dszoo-convert-weights":
            reads.append(positional[1])
        if command == "dszoo-spot":
            reads += positional[1:]
        for path in reads:
            if path.isupper() or path.endswith(("DIR", "CHECKPOINT")):
                continue  # the user's own data
            assert any(path == m or path.startswith(m.rstrip("/") + "/") for m in made), \
                f"{' '.join(words)}: reads {path}, which no example above it makes"
        made += [opts[o] for o in WRITES if o in opts]
        if command == "dszoo-convert-weights":
            made.append(positional[2])
        if command in ("dszoo-train", "train.py") and "--eval-only" not in opts and "--resume" not in opts:
            if "--out-dir" in opts:
                made.append(opts["--out-dir"])
            else:  # runs/train, then runs/train2, ...
                runs += 1
                made.append(f"runs/train{runs if runs > 1 else ''}")
    at_root = sorted({m for m in made if "/" not in m})
    assert {"mnv1.pt", "kws.onnx", "mobilenet_v1.safetensors", "mobilenetv1_100.pth"} <= set(at_root)
    import subprocess

    ignored = subprocess.run(["git", "check-ignore", *at_root], cwd=REPO, capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == at_root, f"not ignored by .gitignore: {sorted(set(at_root) - set(ignored))}"
