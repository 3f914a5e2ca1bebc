"""Hostile files, arguments and tensors: each gets a clear error, nothing unsafe runs, nothing
the user wrote is lost, and no partial output is left behind."""
from __future__ import annotations

import pickle
import re
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from conftest import command_module, run_in_process, structural_variants
from dszoo import CheckpointError, ConfigError, create_model, get_model_config, load_pretrained, read_state_dict, save_state_dict
from dszoo.commands.cli import run_cli
from dszoo.errors import UsageError
from dszoo.training.run_files import read_checkpoint
from dszoo.commands.train import main as train_main

REPO = Path(__file__).resolve().parents[1]


# --- checkpoints ---------------------------------------------------------------------------------

class WritesMarker:
    """Unpickling this creates ``path``: proof that a loader ran code from the file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_files(folder: Path, marker: Path) -> list[Path]:
    raw = folder / "evil_raw.pth"
    raw.write_bytes(pickle.dumps({"model": WritesMarker(marker)}))
    zipped = folder / "evil_zip.pt"
    torch.save({"stem.0.conv.weight": WritesMarker(marker)}, zipped)
    ckpt = folder / "evil_ckpt.pth.tar"
    torch.save({"format": "dszoo-train-1", "model": WritesMarker(marker)}, ckpt)
    return [raw, zipped, ckpt]


def _unpickle_unsafely(path: Path) -> object:
    if not zipfile.is_zipfile(path):
        return pickle.loads(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        name = next(n for n in archive.namelist() if n.endswith("/data.pkl"))
        return pickle.loads(archive.read(name))  # what an unsafe loader does with a torch.save archive


def test_the_marker_payload_is_real(tmp_path: Path) -> None:
    """An unsafe loader would run it (so the tests below prove something)."""
    marker = tmp_path / "ran"
    for path in _evil_files(tmp_path, marker):
        marker.unlink(missing_ok=True)
        _unpickle_unsafely(path)
        assert marker.exists()


def test_code_in_a_pickle_never_runs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    marker = tmp_path / "ran"
    for path in _evil_files(tmp_path, marker):
        with pytest.raises(CheckpointError, match="refused: the file needs arbitrary pickled objects|not a readable"):
            load_pretrained(create_model("ds_cnn_s"), path)
        with pytest.raises(CheckpointError, match="--resume"):
            read_checkpoint(str(path))
        assert run_cli(train_main, ["--pretrained", str(path), "--eval-only", "--quiet"]) == 2
        assert run_cli(command_module("convert_weights").main, [str(path), str(tmp_path / "o.safetensors"), "--model", "mobilenet_v1"]) == 2
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists()
    capsys.readouterr()


@pytest.fixture(scope="module")
def saved_files() -> dict[str, bytes]:
    model = create_model("ds_cnn_s")
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for suffix in (".pt", ".safetensors"):
            save_state_dict(model, Path(tmp) / f"w{suffix}")
            out[suffix] = (Path(tmp) / f"w{suffix}").read_bytes()
        torch.save({"format": "dszoo-train-1", "model": model.state_dict(), "epoch": 1}, Path(tmp) / "ck.pt")
        out["checkpoint"] = (Path(tmp) / "ck.pt").read_bytes()
        return out


def _expect_checkpoint_error(content: bytes, suffix: str, loader: Callable[[Path], object]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"fuzz{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="fuzz"):
            loader(path)


@given(data=st.data())
def test_truncated_checkpoints_are_clear_errors(saved_files: dict[str, bytes], data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(sorted(saved_files)))
    content = saved_files[kind]
    cut = data.draw(st.integers(0, len(content) - 1))
    if kind == "checkpoint":
        _expect_checkpoint_error(content[:cut], ".pt", lambda p: read_checkpoint(str(p)))
    else:
        _expect_checkpoint_error(content[:cut], kind, lambda p: load_pretrained(create_model("ds_cnn_s"), p))


@given(content=st.binary(max_size=300), suffix=st.sampled_from([".pt", ".pth", ".pth.tar", ".safetensors"]))
def test_random_bytes_are_clear_errors(content: bytes, suffix: str) -> None:
    _expect_checkpoint_error(content, suffix, lambda p: load_pretrained(create_model("ds_cnn_s"), p))
    _expect_checkpoint_error(content, suffix, lambda p: read_checkpoint(str(p)))


@given(data=st.data())
def test_wrong_shapes_name_the_key_and_both_shapes(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    model = create_model("ds_cnn_s")
    state = model.state_dict()
    key = data.draw(st.sampled_from([k for k, v in state.items() if v.dim() > 0]))
    shape = tuple(state[key].shape)
    wrong = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple).filter(lambda s: s != shape))
    state[key] = torch.zeros(wrong)
    path = tmp_path_factory.mktemp("shapes") / "w.safetensors"
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=re.escape(f"{key} (checkpoint {wrong}, model {shape})")):
        load_pretrained(model, path)


def test_non_state_dict_contents(tmp_path: Path) -> None:
    for name, obj in [("tensor.pt", torch.zeros(3)), ("list.pt", [torch.zeros(1)]), ("mixed.pt", {"a": torch.zeros(1), "b": 3})]:
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{name}: does not hold a state dict"):
            read_state_dict(tmp_path / name)
    torch.save({}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="missing keys: stem.0.conv.weight"):
        load_pretrained(create_model("ds_cnn_s"), tmp_path / "empty.pt")


# --- scripts: bad arguments exit 2 with one line and write nothing ---------------------------------

SCRIPT_CASES = [
    ("summarize", [], "error: give --model NAME"),
    ("summarize", ["--model", "mobilenetv1"], "error: unknown model 'mobilenetv1'; did you mean 'mobilenet_v1'"),
    ("summarize", ["--model", "missing.yaml"], "error: missing.yaml: file not found"),
    ("summarize", ["--model", "ds_cnn_s", "--input-size", "1", "0", "10"], "error: argument --input-size: must be a positive integer, got '0'"),
    ("summarize", ["--model", "ds_cnn_s", "--input-size", "1", "49"], "error: argument --input-size: expected 3 arguments"),
    ("summarize", ["--model", "ds_cnn_s", "--input-size", "3", "49", "10"], "error: expected 1 input channels (in_chans=1), got 3"),
    ("summarize", ["--model", "xception", "--input-size", "3", "32", "32"], "error: input 32x32 is smaller than the minimum 71x71"),
    ("summarize", ["--model", "ds_cnn_s", "--depth", "-1"], "error: argument --depth: must be an integer >= 0, got '-1'"),
    ("summarize", ["--list", "--model", "xception"], "error: --list summarises every registered model; it takes no --model"),
    ("summarize", ["--model", "ds_cnn_s", "--set", "stages=[[["], "error: --set stages=[[[: VALUE is not valid YAML"),
    ("summarize", ["--model", "ds_cnn_s", "--set", "nosuch=1"], "error: configs/ds_cnn.yaml (overrides for 'ds_cnn_s'): nosuch: unknown override"),
    ("summarize", ["--model", "ds_cnn_s", "--width-mult", "nan"], "error: argument --width-mult: must be a number > 0, got 'nan'"),
    ("summarize", ["--model", "ds_cnn_s", "--set", "width_mult=0"], "width_mult: must be greater than 0"),
    ("summarize", ["--model", "mobilenet_v1", "--num-classes", "2000000"], "num_classes: the model would have 2,053,206,976 parameters"),
    ("summarize", ["--model", "ds_cnn_s", "--plot", "summary.txt"], "error: --plot summary.txt: must end in .png"),
    ("summarize", ["--model", "ds_cnn_s", "--plot", "existing.png"], "error: --plot existing.png: exists; pass --overwrite"),
    ("summarize", ["--model", "ds_cnn_s", "--format", "xml"], "error: argument --format: invalid choice: 'xml'"),
    ("summarize", ["--model", "ds_cnn_s", "--input-size", "1", "99999", "99999"], "input_size: one 1x99999x99999 image would need"),
    ("export", [], "error: the following arguments are required: --format, --out"),
    ("export", ["--model", "ds_cnn_s", "--format", "onnx", "--out", "m.pt"], "error: --out m.pt: must end in .onnx"),
    ("export", ["--model", "ds_cnn_s", "--format", "torchscript", "--out", "existing.pt"], "error: --out existing.pt: exists"),
    ("export", ["--model", "ds_cnn_s", "--format", "torchscript", "--out", "folder.pt"], "error: --out folder.pt: is a folder"),
    ("export", ["--model", "xception", "--format", "torchscript", "--out", "m.pt", "--input-size", "3", "32", "32"], "input_size: 3x32x32 is smaller than the minimum 71x71 of this network"),
    ("export", ["--model", "ds_cnn_s", "--format", "torchscript", "--out", "m.pt", "--pretrained", "corrupt.pt"], "error: corrupt.pt: not a readable PyTorch checkpoint"),
    ("export", ["--model", "ds_cnn_s", "--format", "torchscript", "--out", "m.pt", "--pretrained", "mobilenet.pt"], "error: mobilenet.pt (dszoo) does not fit ds_cnn_s: shape mismatch"),
    ("export", ["--model", "ds_cnn_s", "--format", "pt2", "--out", "m.pt2", "--num-classes", "-1"], "error: argument --num-classes: must be an integer >= 0"),
    ("export", ["--model", "ds_cnn_s", "--format", "pt2", "--out", "m.pt2", "--input-size", "1", "99999", "9999"], "input_size: one 1x99999x9999 image would need"),
    ("convert_weights", [], "error: the following arguments are required: src, dst, --model"),
    ("convert_weights", ["missing.pt", "o.safetensors", "--model", "mobilenet_v1"], "error: missing.pt: checkpoint file not found"),
    ("convert_weights", ["corrupt.pt", "o.safetensors", "--model", "mobilenet_v1"], "error: corrupt.pt: not a readable PyTorch checkpoint"),
    ("convert_weights", ["mobilenet.pt", "o.pt", "--model", "mobilenet_v1"], "error: DST o.pt: must end in .safetensors"),
    ("convert_weights", ["mobilenet.pt", "existing.safetensors", "--model", "mobilenet_v1"], "error: DST existing.safetensors: exists"),
    ("convert_weights", ["mobilenet.pt", "o.safetensors", "--model", "xception"], "error: mobilenet.pt (dszoo) does not fit xception"),
    ("benchmark", ["--models", "nosuch"], "error: unknown models ['nosuch']"),
    ("benchmark", ["--batch-sizes", "0"], "error: argument --batch-sizes: must be a positive integer, got '0'"),
    ("benchmark", ["--repeats", "2.5"], "error: argument --repeats: must be a positive integer, got '2.5'"),
    ("benchmark", ["--threads", "-1"], "error: argument --threads: must be an integer from 1 to "),
    ("benchmark", ["--backends", "tvm"], "error: argument --backends: invalid choice: 'tvm'"),
    ("benchmark", ["--quick", "--models", "xception"], "error: --quick sets its own models, batch sizes, repeats, backends and precisions; drop --models"),
    ("benchmark", ["--json", "existing.json"], "error: --json existing.json: exists; pass --overwrite"),
    ("benchmark", ["--plot", "out.jpg"], "error: --plot out.jpg: must end in .png"),
    ("benchmark", ["--profile", "out.txt"], "error: --profile out.txt: must end in .md"),
    ("benchmark", ["--profile-top", "5"],
     "error: --profile-top sets the length of the --profile tables; add --profile FILE.md"),
    ("train", ["--batch-size", "0"], "error: argument --batch-size: must be a positive integer, got '0'"),
    ("train", ["--epochs", "-1"], "error: argument --epochs: must be a positive integer, got '-1'"),
    ("train", ["--lr", "inf"], "error: argument --lr: must be a number > 0, got 'inf'"),
    ("train", ["--label-smoothing", "1.5"], "error: argument --label-smoothing: must be a number in [0, 1), got '1.5'"),
    ("train", ["--mixup", "-0.5"], "error: argument --mixup: must be a number >= 0, got '-0.5'"),
    ("train", ["--mfcc", "htk"],
     "error: argument --mfcc: invalid choice: 'htk' (choose from 'mlperf_tiny', 'arm_kws', 'narrowband', "
     "'narrowband_stream')"),
    ("train", ["--classes", "1,1"], "error: argument --classes: must be distinct class numbers"),
    ("train", ["--classes", "0,12"], "error: --classes for digits must be in 0..9, got [12]"),
    ("train", ["--opt", "adamww"], "error: --opt adamww: not a timm optimizer; did you mean 'adamw'"),
    ("train", ["--resume", "missing.pt"], "error: --resume missing.pt: no such file"),
    ("train", ["--resume", "run/last.pt", "--pretrained", "mobilenet.pt"], "error: --resume continues a run with its own weights; drop --pretrained"),
    ("train", ["--eval-only", "--pretrained", "mobilenet.pt", "--overwrite"], "error: --eval-only writes no files"),
    ("train", ["--dataset", "fake", "--classes", "0,1"], "error: --classes is for --dataset digits, not fake"),
    ("train", ["--data-dir", "folder.pt"], "error: --dataset digits reads no --data-dir"),
    ("train", ["--out-dir", "existing.png/run"], "error: --out-dir existing.png/run: existing.png is a file, not a folder"),
    ("train", ["--img-size", "40000"], "input_size: one 1x40000x40000 image would need"),
    ("train", ["--model", "xception"], "error: configs/xception.yaml: variant xception + overrides {'in_chans': 1, 'input_size': 32}: input_size: 1x32x32 is smaller than the minimum 71x71"),
    ("train", ["--pretrained", "mobilenet.pt", "--model", "ds_cnn_s", "--img-size", "49"], "does not fit ds_cnn_s"),
    ("train", ["--dataset", "fake", "--in-chans", "4"], "error: --in-chans 4: --dataset fake gives RGB images (3 "
                                                        "channels), or grey ones for --in-chans 1; allowed: 1, 3"),
    ("leave_one_engine_out", ["--data-dir", "d", "--out-dir", "o", "--snr", "nan"],
     "error: argument --snr: must be a finite number, got 'nan'"),
    ("eval_speech", ["run.pt", "d", "--snr", "inf"], "error: argument --snr: must be a finite number, got 'inf'"),
    ("eval_speech", ["run.pt", "d", "--threshold=-inf"], "error: argument --threshold: must be a finite number, got '-inf'"),
]


def test_every_numeric_option_is_checked_where_it_is_read() -> None:
    """No command takes a bare ``type=float`` or ``type=int`` (which let nan, inf and sizes past
    any allocator through): each uses a checking type of commands.cli."""
    import dszoo.commands

    folder = Path(dszoo.commands.__file__).parent
    bare = [f"{p.name}:{i}" for p in sorted(folder.glob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"type=(float|int)\b", line)]
    assert bare == []


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder holding files a user already has; the scripts run from it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    (tmp_path / "folder.pt").mkdir()
    for name in ("existing.png", "existing.pt", "existing.json", "existing.safetensors"):
        (tmp_path / name).write_bytes(b"the user's file")
    torch.save(create_model("mobilenet_v1_025", num_classes=10).state_dict(), tmp_path / "mobilenet.pt")
    return tmp_path


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else b"<dir>" for p in folder.rglob("*")}


@pytest.mark.parametrize("script,argv,message", SCRIPT_CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(SCRIPT_CASES)])
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(workdir: Path, capsys: pytest.CaptureFixture,
                                                              script: str, argv: list[str], message: str) -> None:
    main = train_main if script == "train" else command_module(script).main
    before = _snapshot(workdir)
    code = run_cli(main, argv + (["--quiet"] if script == "train" else []))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err, err
    assert _snapshot(workdir) == before


def test_failed_start_with_overwrite_keeps_the_earlier_run(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    run = workdir / "run"
    run.mkdir()
    (run / "last.pt").write_bytes(b"the user's earlier run")
    assert run_cli(train_main, ["--out-dir", str(run), "--overwrite", "--opt", "adamww", "--quiet"]) == 2
    assert (run / "last.pt").read_bytes() == b"the user's earlier run"
    capsys.readouterr()


# --- tensors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", structural_variants())  # the input checks depend on the network, not its widths
def test_bad_tensors_say_what_was_expected(name: str) -> None:
    model = create_model(name).eval()
    c, h, w = model.cfg.input_size
    min_h, min_w = model.min_input_size
    cases = [
        (torch.zeros(1, c, h, w, dtype=torch.long), TypeError, "expected a floating-point input (e.g. torch.float32), got torch.int64"),
        (torch.zeros(c, h, w), ValueError, f"expected a 4-D input (batch, {c}, H, W), got 3 dimensions"),
        (torch.zeros(1, 1, c, h, w), ValueError, "got 5 dimensions"),
        (torch.zeros(1, c + 1, h, w), ValueError, f"expected {c} input channels (in_chans={c}), got {c + 1}"),
        (torch.zeros(1, c, h, w).numpy(), TypeError, f"expected a torch.Tensor (batch, {c}, H, W), got ndarray"),
    ]
    if min_h > 1:
        cases.append((torch.zeros(1, c, min_h - 1, w), ValueError, f"input {min_h - 1}x{w} is smaller than the minimum {min_h}x{min_w} for {name}"))
    for x, kind, message in cases:
        with pytest.raises(kind, match=re.escape(message)):
            model(x)


def test_size_guard_refuses_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_allocation(*args, **kwargs):
        raise AssertionError("a layer was allocated")

    monkeypatch.setattr(torch.nn.Conv2d, "__init__", no_allocation)
    from dszoo import ModelTooLargeError

    typo = [{"type": "ds", "out": 1024}, {"type": "ds", "out": 1024000}]  # 1024000 for 1024
    with pytest.raises(ModelTooLargeError, match=r"stages\[1\]: the model would have 1,0\d\d,\d{3},\d{3} parameters .* "
                       r"the largest layer is stages.1.0.pw.conv \(1,024 -> 1,024,000 channels"):
        create_model("mobilenet_v1", stages=typo, num_classes=0, input_size=32)
    monkeypatch.undo()
    assert get_model_config("mobilenet_v1", stages=typo).stages[1].out == 1024000  # valid, only too large to build
    small = create_model("ds_cnn_s", width_mult=40.0, allow_large=True)  # opting in builds it
    assert small.num_features == 2560


def test_wav_files_that_lie_or_hold_non_finite_samples_are_refused_naming_the_file(tmp_path: Path) -> None:
    """The one WAV reader behind spotting, training and calibration: sample rates outside 1 kHz -
    384 kHz, NaN or infinite samples and headers of 0 channels or a 0-byte block are one line naming the
    file; resampling any allowed rate costs a bounded filter (up and down at most 1,000)."""
    import numpy as np
    from scipy.io import wavfile

    from dszoo.audio.speech_commands import decode_wav
    from dszoo.audio.spot import load_audio
    from dszoo.audio.synth import MAX_RESAMPLE_FACTOR, resample_ratio

    silence = np.zeros(1600, np.int16)
    for rate in (0, 999, 384_001, 9_999_991, 2**31 - 1):
        path = tmp_path / f"r{rate}.wav"
        wavfile.write(path, 16000, silence)
        data = bytearray(path.read_bytes())
        data[24:32] = rate.to_bytes(4, "little") + (2 * rate).to_bytes(4, "little")  # rate and bytes per second
        path.write_bytes(bytes(data))
        with pytest.raises(UsageError) as err:
            load_audio(path)
        assert str(err.value) == f"{path}: sample rate {rate} Hz in its header; allowed: 1,000 to 384,000 Hz"
    for bad in (np.nan, np.inf, -np.inf):
        path = tmp_path / f"{bad}.wav"
        wavfile.write(path, 16000, np.array([0.0, 0.5, bad, 0.1], np.float32))
        with pytest.raises(UsageError, match=re.escape(f"{path}: holds NaN or infinite samples; audio must be finite")):
            decode_wav(path)
    for offset, name in ((22, "channels"), (32, "block_align")):
        path = tmp_path / f"zero_{name}.wav"
        wavfile.write(path, 16000, silence)
        data = bytearray(path.read_bytes())
        data[offset:offset + 2] = b"\0\0"
        path.write_bytes(bytes(data))
        with pytest.raises(UsageError) as err:
            decode_wav(path)
        assert str(err.value).startswith(f"{path}: not a readable WAV file (") and "\n" not in str(err.value)
    for rate in [1000, 1001, 8000, 11025, 15999, 16001, 22050, 44100, 48000, 96000, 192000, 383_999, 384_000]:
        up, down = resample_ratio(rate, 16000)
        assert max(up, down) <= MAX_RESAMPLE_FACTOR and abs(up / down * rate / 16000 - 1) < 1e-4, rate
    path = tmp_path / "odd_rate.wav"
    wavfile.write(path, 383_999, np.zeros(383_999, np.int16))
    wave, notes = load_audio(path)
    assert len(wave) == 16000 and notes == ["resampled from 383999 Hz to 16000 Hz"]


def test_a_config_whose_counts_multiply_past_the_layer_limit_is_refused_at_once(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Each count within its own bound, their product 9 million layers: refused before any walk
    of its layers, naming the stage and the product."""
    from dszoo import plan

    def no_walk(*args: object) -> None:
        raise AssertionError("the layers were walked")

    monkeypatch.setattr(plan, "_walk", no_walk)
    path = tmp_path / "bomb.yaml"
    path.write_text("stem: {type: conv, out: 8, stride: 2}\nstages:\n"
                    + "  - {type: xception, out: 8, repeat: 1000, convs: 1000}\n" * 3)
    with pytest.raises(ConfigError) as err:
        create_model(str(path))
    assert str(err.value) == (f"{path}: stages[0]: the network would have 9,006,002 layers (stages[0]: repeat 1,000 x "
                              "1,000 convs alone gives 3,002,000), above the limit of 100,000")


def test_a_file_that_is_no_config_is_never_echoed(tmp_path: Path) -> None:
    """A secret read as a config (--model /etc/shadow): one line that names the file and shows
    none of its content; a config with a typo still names its keys."""
    secret = tmp_path / "shadow"
    secret.write_text("root:$6$salt$hash:20228:0:99999:7:::\ndaemon:*:20228:0:99999:7:::\n")
    res = run_cli(command_module("summarize").main, ["--model", str(secret)])
    assert res == 2
    with pytest.raises(ConfigError) as err:
        create_model(str(secret))
    assert str(err.value) == (f"{secret}: not a dszoo config: none of its 2 top-level keys is a config key (a model "
                              "has stem and stages, a family file variants); its content is not shown")
    shown = str(err.value).removeprefix(str(secret))
    assert "root" not in shown and "hash" not in shown and "daemon" not in shown
    typo = tmp_path / "net.yaml"
    typo.write_text("stem: {type: conv, out: 8}\nstages: []\nwidht_mult: 2\n")
    with pytest.raises(ConfigError, match="widht_mult: unknown key; did you mean 'width_mult'"):
        create_model(str(typo))


@pytest.mark.parametrize("preset", ["mlperf_tiny", "arm_kws"])
def test_mfcc_edge_inputs(preset: str) -> None:
    """No samples is silence for every preset (it was an IndexError for one); a batch of none, a
    NumPy array or a list are one clear error saying what to pass."""
    import numpy as np

    from dszoo import MFCC

    mfcc = MFCC(preset)
    empty = mfcc(torch.zeros(2, 0))
    assert empty.shape == (2, 1, 49, 10) and torch.equal(empty, mfcc(torch.zeros(2, 16000)))
    for wrong, kind in ((np.zeros(16000, np.float32), "ndarray"), ([0.0] * 16000, "list")):
        with pytest.raises(TypeError, match=f"expected a torch.Tensor of waveforms \\(batch, samples\\), got {kind}; "
                                            r"convert it with torch.as_tensor\(wave, dtype=torch.float32\)"):
            mfcc(wrong)
    with pytest.raises(ValueError, match="expected at least one waveform, got a batch of 0"):
        mfcc(torch.zeros(0, 16000))


def test_sizes_beyond_the_machine_are_refused_in_one_line() -> None:
    """Bounds where a number would otherwise run into the allocator: the benchmark's batch (by
    the memory its activations need), its threads (four a core), optimize_for_inference's
    example batch (at least one example)."""
    import os

    from dszoo import optimize_for_inference

    res = run_in_process("benchmark", ["--models", "xception", "--batch-sizes", "2147483647"])
    assert res.returncode == 2 and res.stderr.startswith("error: batch 2147483647 of xception needs about ")
    assert res.stderr.rstrip().endswith("GiB available here; lower --batch-sizes or --train-batch")
    res = run_in_process("benchmark", ["--threads", "100000"])
    assert res.returncode == 2 and f"must be an integer from 1 to {4 * os.cpu_count()}, got '100000'" in res.stderr
    with pytest.raises(ValueError, match=r"example_input of shape \(0, 1, 49, 10\) holds no examples"):
        optimize_for_inference(create_model("ds_cnn_s"), torch.randn(0, 1, 49, 10))


def test_wav_files_are_found_in_any_case_of_their_ending(tmp_path: Path) -> None:
    """``B.WAV`` is a WAV file: every reader of a folder of clips finds it (dszoo-spot, the
    dataset index, the scorers all list a folder through ``wav_files_in``)."""
    import numpy as np

    from dszoo.audio.make_data import write_wav
    from dszoo.audio.speech_commands import wav_files_in

    folder = tmp_path / "clips"
    folder.mkdir()
    for name in ("a.wav", "B.WAV", "c.Wav"):
        write_wav(folder / name, np.zeros(16000, dtype=np.float32))
    (folder / "notes.txt").write_text("not audio")
    assert [p.name for p in wav_files_in(folder)] == ["B.WAV", "a.wav", "c.Wav"]
    res = run_in_process("spot", [str(folder)])
    assert res.returncode == 0, res.stderr
    assert [line.split(":")[0] for line in res.stdout.splitlines()] == [str(folder / n) for n in ("B.WAV", "a.wav", "c.Wav")]


def test_names_from_files_and_folders_cannot_drive_the_terminal(tmp_path: Path) -> None:
    """A clip named with an escape sequence (or a right-to-left override) is printed with the
    sequence written out: every command's output passes through ``cli.escape_controls``."""
    import numpy as np

    from dszoo.audio.make_data import write_wav
    from dszoo.commands.cli import escape_controls

    assert escape_controls("a\tb\x1b[2Jc\u202ed\x07\n") == "a\tb\\x1b[2Jc\\u202ed\\x07\n"
    folder = tmp_path / "clips"
    folder.mkdir()
    write_wav(folder / "\x1b[2Jclear\u202e.wav", np.zeros(16000, dtype=np.float32))
    res = run_in_process("spot", [str(folder)])
    assert res.returncode == 0, res.stderr
    assert "\x1b" not in res.stdout and "\u202e" not in res.stdout
    assert res.stdout.startswith(f"{folder}/\\x1b[2Jclear\\u202e.wav: ")
    res = run_in_process("spot", [str(folder / "\x1b]0;title\x07.wav")])
    assert res.returncode == 2 and "\x1b" not in res.stderr and "\\x1b]0;title\\x07.wav" in res.stderr


def test_a_name_that_is_not_utf8_is_printed_escaped(tmp_path: Path) -> None:
    """A file name holding a byte that is not UTF-8 (Python's lone surrogate for it) is printed
    escaped, so a terminal that encodes strictly prints the line rather than the command failing."""
    import io

    import numpy as np

    from dszoo.audio.make_data import write_wav

    folder = tmp_path / "clips"
    folder.mkdir()
    write_wav(folder / b"caf\xe9.wav".decode("utf-8", "surrogateescape"), np.zeros(16000, dtype=np.float32))
    strict = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    from contextlib import redirect_stdout

    with redirect_stdout(strict):
        code = command_module("spot").cli([str(folder)])
    assert code == 0
    assert strict.buffer.getvalue().decode().startswith(f"{folder}/caf\\udce9.wav: ")


def test_a_reader_that_stops_reading_ends_the_command_quietly() -> None:
    """``dszoo-summarize --list | head -1``: when the reader of a command's output exits, the
    command (``run_cli``) stops as `yes | head` does, with status 141 and nothing on stderr (no
    error line, no traceback at exit). Ten megabytes of lines outlast any pipe's buffer."""
    import subprocess
    import sys

    lines = "from dszoo.commands.cli import run_cli; import sys; sys.exit(run_cli(lambda argv: [print('x' * 99) for _ in range(100_000)] and 0))"
    res = subprocess.run(f"'{sys.executable}' -c \"{lines}\" | head -1; echo \"status ${{PIPESTATUS[0]}}\"",
                         shell=True, executable="/bin/bash", capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines() == ["x" * 99, "status 141"] and res.stderr == ""


def test_libraries_quiet_holds_back_native_logs_and_loses_none_on_an_error(capfd: pytest.CaptureFixture[str]) -> None:
    """``libraries_quiet(native=True)``, around the runtimes' writers and loaders: what a library
    writes to standard error (from C++ to descriptor 2, or through ``sys.stderr``) is dropped when
    the block succeeds and written out after all when it raises."""
    import os
    import sys

    from dszoo.quiet import libraries_quiet

    capfd.readouterr()
    with libraries_quiet(native=True):
        os.write(2, b"[cpuinfo.cpp:1] probing\n")
        print("py: probing", file=sys.stderr)
    assert capfd.readouterr().err == ""
    with pytest.raises(ValueError, match="^broken$"), libraries_quiet(native=True):
        os.write(2, b"[loader.cpp:9] cannot open m.pte\n")
        raise ValueError("broken")
    assert capfd.readouterr().err == "[loader.cpp:9] cannot open m.pte\n"


def test_twice_quiet_training_prints_nothing(tmp_path: Path) -> None:
    """``-qq``: no line of ours and no library's warning (timm's scheduler warns of a schedule of
    one step), on either stream."""
    res = run_in_process("train", ["--epochs", "1", "--max-batches", "1", "-qq", "--out-dir", str(tmp_path / "run")])
    assert (res.returncode, res.stdout, res.stderr) == (0, "", "")


@pytest.mark.parametrize("key, value", [("card", 5), ("model_config", 7), ("class_names", "yes"), ("mfcc_preset", 3),
                                        ("threshold", True)])
def test_spotter_metadata_of_the_wrong_shape_is_one_line(key: str, value: Any, tmp_path: Path) -> None:
    """Each field a spotter file's metadata holds is checked for its type where the file is read."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    from dszoo.audio.spot import bundled_spotter_path

    with safe_open(str(bundled_spotter_path()), framework="pt") as fh:
        meta, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    about = {**json.loads(meta["dszoo_spotter"]), key: value}
    path = tmp_path / "spotter.safetensors"
    save_file(tensors, str(path), metadata={**meta, "dszoo_spotter": json.dumps(about)})
    res = run_in_process("spot", [str(path), str(path)])
    damaged = "its spotter metadata is damaged: "
    expected = {"card": f"{damaged}card is a int, not a dict", "model_config": f"{damaged}model_config is a int, not a dict",
                "class_names": f"{damaged}class_names is a str, not a list",
                "mfcc_preset": "trained on the MFCC front end 3, which dszoo does not have; allowed: mlperf_tiny, "
                               "arm_kws, narrowband, narrowband_stream",
                "threshold": f"{damaged}threshold is a bool, not a int or float"}[key]
    assert res.returncode == 2 and res.stderr == f"error: {path}: {expected}\n"


@pytest.mark.parametrize("text", ["[" * 100_000 + "]" * 100_000, '{"data_dir": 3}', "[1, 2]", '"a string"'])
def test_a_json_file_of_the_wrong_shape_or_depth_is_one_line(text: str, tmp_path: Path) -> None:
    """``--loeo`` files nested past Python's recursion limit, or holding the wrong types, are
    refused where they are read; a user's ``args.json`` of any shape is not taken for a run's."""
    from dszoo.commands.leave_one_engine_out import merge_results
    from dszoo.training.run_files import files_a_run_would_replace

    path = tmp_path / "loeo.json"
    path.write_text(text)
    with pytest.raises(UsageError, match=rf"^{re.escape(str(path))}: not a dszoo-leave-one-engine-out loeo\.json \("):
        merge_results([path])
    (tmp_path / "args.json").write_text(text)
    assert files_a_run_would_replace(tmp_path) == ["args.json"]  # the user's own: a run there is refused


def test_a_small_file_whose_config_describes_a_huge_network_is_refused_before_building(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint of a few weights whose saved config describes 800M parameters is refused
    from the config's closed-form count, nothing built (it took 9 s and 3.7 GB before)."""
    from dszoo import checkpoints

    cfg = get_model_config("mobilenet_v1", width_mult=16.0).model_dump(mode="json")
    ckpt = {"model_config": cfg, "model": create_model("ds_cnn_s").state_dict()}
    monkeypatch.setattr(checkpoints, "build_model", lambda cfg: pytest.fail("built the network"))
    with pytest.raises(CheckpointError, match=r"^x\.pt: its model_config builds 8\d\d,\d{3},\d{3} parameters, but it "
                                              r"holds 2\d,\d{3} numbers: its weights are those of another network$"):
        checkpoints.build_from_checkpoint(ckpt, "x.pt")


def test_converting_a_file_that_names_its_classes_and_input_is_refused(default_run: tuple[Path, Any],
                                                                        tmp_path: Path) -> None:
    """dszoo-convert-weights writes weights alone: given a spotter file or a dszoo-train checkpoint
    (front end, class names, threshold), it refuses rather than drop them, and writes nothing."""
    from dszoo.audio.spot import bundled_spotter_path

    trained, _ = default_run
    out = tmp_path / "w.safetensors"
    for src, model, kind in ((bundled_spotter_path(), "ds_cnn_s", "a keyword spotter file"),
                             (trained / "best.pt", "mobilenet_v1_025", "a dszoo-train checkpoint")):
        res = run_in_process("convert_weights", [str(src), str(out), "--model", model])
        assert res.returncode == 2 and res.stderr.startswith(f"error: {src}: {kind}, already dszoo's, whose ")
        assert not out.exists()
