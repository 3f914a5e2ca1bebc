"""The commands as a user meets them: installed console commands, ``python -m models``,
``scripts/``, ``import dszoo``, and what ``dszoo-train`` prints at each verbosity."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_in_process
from models import __main__ as models_main
from models import list_models
from models.commands import COMMANDS, command

REPO = Path(__file__).resolve().parents[1]


def test_every_command_is_a_console_script_calling_its_cli() -> None:
    scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts") if e.name.startswith("dszoo-")}
    assert sorted(scripts) == sorted(f"dszoo-{name}" for name in COMMANDS)
    for name in COMMANDS:
        assert scripts[f"dszoo-{name}"].load() is command(name)


def test_every_command_has_a_script_that_runs_it() -> None:
    for name in COMMANDS:
        text = (REPO / "scripts" / f"{name.replace('-', '_')}.py").read_text()
        assert f"from models.commands.{name.replace('-', '_')} import cli\n" in text


def test_scripts_and_python_m_models_run_as_processes() -> None:
    listed = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), "--list", "--format", "json"],
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [row["model"] for row in json.loads(listed.stdout)] == list_models()
    bare = subprocess.run([sys.executable, "-m", "models"], capture_output=True, text=True, cwd=REPO)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("usage: python -m models COMMAND [options] (or dszoo-COMMAND once installed)")
    assert all(f"  {name} " in bare.stderr for name in COMMANDS)


def test_python_m_models_dispatches_and_names_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert models_main.main(["summarize", "--list", "--format", "json"]) == 0
    assert [row["model"] for row in json.loads(capsys.readouterr().out)] == list_models()
    assert models_main.main(["sumarize"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'sumarize'; usage: python -m models COMMAND")
    assert models_main.main(["--help"]) == 0 and "  train " in capsys.readouterr().out


def test_import_dszoo_is_the_models_api() -> None:
    import dszoo
    import models

    assert dszoo.create_model is models.create_model and sorted(dszoo.__all__) == sorted(models.__all__)
    assert all(hasattr(dszoo, name) for name in models.__all__)


QUICK_RUN = ["--img-size", "16", "--epochs", "2", "--max-batches", "2", "--warmup-epochs", "0"]


@pytest.mark.parametrize("flags,epoch_lines,closing_line", [([], 2, True), (["-q"], 2, True), (["--quiet"], 2, True),
                                                           (["-qq"], 0, False)])
def test_quiet_hides_bars_and_qq_hides_the_epoch_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       flags: list[str], epoch_lines: int, closing_line: bool) -> None:
    import tqdm

    bars: list[object] = []

    class RecordingTqdm(tqdm.tqdm):
        def __init__(self, *args, **kwargs) -> None:
            bars.append(kwargs["disable"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(tqdm, "tqdm", RecordingTqdm)
    res = run_in_process("train", QUICK_RUN + flags + ["--out-dir", str(tmp_path / "run")])
    assert res.returncode == 0, res.stderr
    assert sum(line.startswith("epoch ") for line in res.stdout.splitlines()) == epoch_lines
    assert ("best val_top1" in res.stdout) is closing_line
    # one bar per epoch: off with -q, else tqdm's automatic choice (shown on a terminal)
    assert bars == [True, True] if flags else bars == [None, None]
    assert (tmp_path / "run" / "last.pt").exists()


def test_fake_data_has_the_classes_asked_for(tmp_path: Path) -> None:
    res = run_in_process("train", ["--dataset", "fake", "--num-classes", "4", "--fake-size", "16", "--in-chans", "3",
                                   "--model", "ds_cnn_s", "--epochs", "1", "-qq", "--out-dir", str(tmp_path / "run")])
    assert res.returncode == 0, res.stderr
    import torch

    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["model"]["classifier.weight"].shape[0] == 4
    args = json.loads((tmp_path / "run" / "args.json").read_text())
    assert args["num_classes"] == 4 and args["dataset_info"] == "FakeData (16 train images, 4 classes)"
