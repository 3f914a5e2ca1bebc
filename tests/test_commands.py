"""The commands as a user meets them: installed console commands, ``python -m dszoo``,
``scripts/``, ``import dszoo``, and what ``dszoo-train`` prints at each verbosity."""
from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from conftest import NOT_INSTALLED, run_in_process
from dszoo import __main__ as dszoo_main
from dszoo import list_models
from dszoo.commands import COMMANDS, command

REPO = Path(__file__).resolve().parents[1]


def test_every_command_is_a_console_script_calling_its_cli() -> None:
    scripts = {e.name: e for e in importlib.metadata.entry_points(group="console_scripts") if e.name.startswith("dszoo-")}
    assert sorted(scripts) == sorted(f"dszoo-{name}" for name in COMMANDS)
    for name in COMMANDS:
        assert scripts[f"dszoo-{name}"].load() is command(name)


def test_every_command_has_a_script_that_runs_it() -> None:
    for name in COMMANDS:
        text = (REPO / "scripts" / f"{name.replace('-', '_')}.py").read_text()
        assert f"from dszoo.commands.{name.replace('-', '_')} import cli  # noqa: E402\n" in text


def test_scripts_and_python_m_dszoo_run_as_processes() -> None:
    listed = subprocess.run([sys.executable, str(REPO / "scripts" / "summarize.py"), "--list", "--format", "json"],
                            capture_output=True, text=True)
    assert listed.returncode == 0, listed.stderr
    assert [row["model"] for row in json.loads(listed.stdout)] == list_models()
    script = REPO / "scripts" / "summarize.py"
    uninstalled = subprocess.run(
        [sys.executable, "-c", NOT_INSTALLED + f"import runpy; sys.argv = [{str(script)!r}, '--list', '--format', 'json']; "
         f"runpy.run_path({str(script)!r}, run_name='__main__')"], capture_output=True, text=True, cwd="/")
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert [row["model"] for row in json.loads(uninstalled.stdout)] == list_models()
    bare = subprocess.run([sys.executable, "-m", "dszoo"], capture_output=True, text=True, cwd=REPO)
    assert bare.returncode == 2 and bare.stdout == ""
    assert bare.stderr.startswith("usage: python -m dszoo COMMAND [options] (or dszoo-COMMAND)")
    assert all(f"  {name} " in bare.stderr for name in COMMANDS)


def test_python_m_dszoo_dispatches_and_names_unknown_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert dszoo_main.main(["summarize", "--list", "--format", "json"]) == 0
    assert [row["model"] for row in json.loads(capsys.readouterr().out)] == list_models()
    assert dszoo_main.main(["sumarize"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown command 'sumarize'; usage: python -m dszoo COMMAND")
    assert dszoo_main.main(["--help"]) == 0 and "  train " in capsys.readouterr().out


def test_an_installed_dszoo_lives_beside_the_users_own_models_package(tmp_path: Path) -> None:
    """``pip install .`` (not editable) into a fresh venv, used from a project folder that has its
    own ``models/``, ``blocks.py`` and ``configs/``: the wheel adds one top-level package, dszoo
    creates, summarises and trains from there (configs from its package data, the user's YAML by
    path), and the user's packages stay theirs."""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
                    str(REPO)], check=True, capture_output=True)
    (wheel,) = wheels.glob("dszoo-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"dszoo", wheel.name.split("-py")[0] + ".dist-info"}
    folders = {"models": "dszoo", "blocks": "dszoo/blocks", "configs": "dszoo/configs"}
    sources = {f"{folders[p.relative_to(REPO).parts[0]]}/{p.relative_to(REPO / p.relative_to(REPO).parts[0]).as_posix()}"
               for top in folders for p in (REPO / top).rglob("*.py") if "__pycache__" not in p.parts}
    assert sources <= set(names), f"setup.cfg's packages miss {sorted(sources - set(names))}"
    configs = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("dszoo/configs/") and n.endswith(".yaml"))
    assert configs == sorted(p.name for p in (REPO / "configs").glob("*.yaml"))

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # torch and the other dependencies from the test's environment: a path line (its own .pth
    # files, dszoo's editable finder among them, are not run)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps",
                    str(wheel)], check=True, capture_output=True)

    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "models" / "__init__.py").write_text("OWNER = 'user'\n")
    (project / "blocks.py").write_text("OWNER = 'user'\n")
    (project / "configs").mkdir()
    (project / "configs" / "my_net.yaml").write_text(
        "stem: {out: 8, kernel: 3, stride: 2}\nstages:\n  - {type: ds, out: 16, stride: 2}\n")
    env = {"PATH": str(venv / "bin"), "OMP_NUM_THREADS": "1"}
    code = ("import models, blocks, dszoo; from dszoo import count_params, create_model, summarize; "
            "print(models.OWNER, blocks.OWNER, dszoo.__file__); "
            "print(count_params(create_model('mobilenet_v1')), count_params(create_model('configs/my_net.yaml')), "
            "summarize('ds_cnn_s').params)")
    out = subprocess.run([str(venv / "bin" / "python"), "-c", code], cwd=project, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.splitlines()
    assert first.split()[:2] == ["user", "user"] and first.split()[2].startswith(str(site / "dszoo"))
    # my_net: stem 3*8*9 + 16 (BN) | dw 8*9 + 16, pw 8*16 + 32 | classifier 16*1000 + 1000
    assert second.split() == ["4231976", str(216 + 16 + 72 + 16 + 128 + 32 + 17000), "23180"]
    summary = subprocess.run([str(venv / "bin" / "dszoo-summarize"), "--model", "configs/my_net.yaml", "--format", "json"],
                             cwd=project, env=env, capture_output=True, text=True)
    assert summary.returncode == 0, summary.stderr
    assert json.loads(summary.stdout)["params"] == 17480
    trained = subprocess.run([str(venv / "bin" / "python"), "-m", "dszoo", "train", "--epochs", "1", "--max-batches", "2",
                              "--img-size", "16", "-qq", "--out-dir", "run"], cwd=project, env=env, capture_output=True,
                             text=True)
    assert trained.returncode == 0, trained.stderr
    assert (project / "run" / "best.pt").is_file() and (project / "models" / "__init__.py").read_text() == "OWNER = 'user'\n"


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


def test_a_script_beside_a_clone_folder_named_dszoo_imports_the_package(tmp_path: Path) -> None:
    """A clone folder named dszoo next to the user's script: ``import dszoo`` finds the folder
    first; it gives the package in that checkout, not an empty namespace package."""
    (tmp_path / "dszoo").symlink_to(REPO, target_is_directory=True)
    (tmp_path / "use.py").write_text("import dszoo\nfrom dszoo import create_model\n"
                                     "print(dszoo.__file__, create_model('ds_cnn_s', num_classes=3).num_classes)\n")
    res = subprocess.run([sys.executable, "use.py"], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout == f"{REPO / 'models' / '__init__.py'} 3\n"  # the checkout's package, built
