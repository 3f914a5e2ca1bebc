"""A training run never loses or misreports work, special files never hang, every bad input
gets one clear answer. Each test stands for a class of failure (docs/reliability.md)."""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import QAT_ARGS, by_name, run_in_process, small_input_size, structural_variants
from dszoo import CheckpointError, ConfigError, create_model, load_pretrained, optimize_for_inference
from dszoo.deployment.export import randomise_batchnorm_statistics
from dszoo.errors import RunError, UsageError
from dszoo.files import atomic_path
from dszoo.training import TrainConfig, train
from dszoo.training import loop
from dszoo.training.data import _image_folder
from dszoo.training.run_files import LOCK_FILE, RunFolderBusy, acquire_run_lock, read_checkpoint, release_run_lock

REPO = Path(__file__).resolve().parents[1]
QUICK = dict(model="mobilenet_v1_025", img_size=16, warmup_epochs=0, quiet=2, max_batches=2)


def _epoch(path: Path) -> int:
    return torch.load(path, weights_only=True)["epoch"]


# --- data loss and misreported runs ------------------------------------------------------------

def test_a_resumed_overwrite_run_keeps_its_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--overwrite is what one command asked for: a resume must not read it back and delete the
    run's own checkpoints (a kill in that first resumed epoch would lose them all)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"an earlier run the user chose to replace")
    train(TrainConfig(**QUICK, epochs=1, overwrite=True, out_dir=str(out)))
    assert _epoch(out / "last.pt") == 1

    def killed(*args: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_train_one_epoch", killed)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(resume=str(out / "last.pt"), epochs=3, quiet=2))
    assert _epoch(out / "last.pt") == 1 and (out / "best.pt").exists() and (out / "metrics.csv").exists()


def test_resuming_an_older_checkpoint_never_replaces_a_newer_one(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(TrainConfig(**QUICK, epochs=2, out_dir=str(out)))
    older = torch.load(out / "last.pt", weights_only=True)
    older.update(epoch=1, history=older["history"][:1])
    torch.save(older, out / "best.pt")
    with pytest.raises(UsageError, match=r"--resume .*best.pt: .*last.pt holds a later epoch \(2 > 1\) that resuming "
                                         r"would overwrite"):
        train(TrainConfig(resume=str(out / "best.pt"), epochs=3, quiet=2))
    with pytest.raises(UsageError, match=r"has already trained all 2 epochs; pass --epochs N with N > 2"):
        train(TrainConfig(resume=str(out / "last.pt"), quiet=2))
    assert _epoch(out / "last.pt") == 2
    longer = train(TrainConfig(resume=str(out / "last.pt"), epochs=3, quiet=2)).history[-1]
    # the schedule spans the longer run (2 steps an epoch, no warm-up): not stuck at its floor
    assert longer["epoch"] == 3 and longer["lr"] == pytest.approx(1e-4 + 0.5 * (1e-2 - 1e-4) * (1 + math.cos(math.pi * 4 / 6)))


@pytest.mark.parametrize("given, named", [
    (dict(lr=0.5), "--lr 0.5 (the run's: 0.01)"),
    (dict(model="ds_cnn_s"), "--model 'ds_cnn_s' (the run's: 'mobilenet_v1_025')"),
    (dict(num_classes=5), "--num-classes 5 (the run's: None)"),
    (dict(out_dir="elsewhere"), "--out-dir 'elsewhere'"),
])
def test_resume_refuses_options_that_contradict_the_run(tmp_path: Path, given: dict, named: str) -> None:
    out = tmp_path / "run"
    train(TrainConfig(**QUICK, epochs=1, out_dir=str(out)))
    with pytest.raises(UsageError, match="--resume continues a run with its own options") as err:
        train(TrainConfig(resume=str(out / "last.pt"), epochs=2, quiet=2, **given))
    assert named in str(err.value) and "may change only --epochs, --quiet, --workers, --allow-large, --compile" in str(err.value)
    assert _epoch(out / "last.pt") == 1


def test_resume_weighs_an_option_given_at_its_default_value(tmp_path: Path) -> None:
    """``--lr 0.01 --mixup 0`` named on the command line are given, although they are the
    defaults: a run trained with others refuses them on ``--resume`` (they were taken for "not
    given" and silently ignored)."""
    out = tmp_path / "run"
    args = ["--img-size", "16", "--warmup-epochs", "0", "-qq", "--max-batches", "2"]
    assert run_in_process("train", [*args, "--epochs", "1", "--lr", "0.05", "--mixup", "0.2", "--out-dir", str(out)]) \
        .returncode == 0
    res = run_in_process("train", ["--resume", str(out / "last.pt"), "--epochs", "2", "--lr", "0.01", "--mixup", "0"])
    assert res.returncode == 2 and "--lr 0.01 (the run's: 0.05)" in res.stderr and "--mixup 0.0 (the run's: 0.2)" in res.stderr
    assert _epoch(out / "last.pt") == 1
    res = run_in_process("train", ["--resume", str(out / "last.pt"), "--epochs", "2", "--lr", "0.05", "-qq"])
    assert res.returncode == 0, res.stderr  # the run's own value, given again, is no contradiction
    assert _epoch(out / "last.pt") == 2


def test_a_run_folder_has_one_owner(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    lock = acquire_run_lock(folder)
    assert lock.read_text().split()[0] == str(os.getpid())
    with pytest.raises(RunFolderBusy, match="is in use by another training process"):
        acquire_run_lock(folder)
    with pytest.raises(RunFolderBusy):
        train(TrainConfig(**QUICK, epochs=1, out_dir=str(folder)))
    release_run_lock(lock)
    assert not lock.exists()


def test_a_second_train_process_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), "--img-size", "16", "--epochs", "40",
                              "-qq", "--out-dir", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while not (out / LOCK_FILE).exists() and time.time() < deadline:
            time.sleep(0.05)
        res = run_in_process("train", ["--img-size", "16", "--epochs", "1", "--out-dir", str(out)])
        assert res.returncode == 2
        assert res.stderr == f"error: {out} is in use by another training process (pid {first.pid}); wait for it to " \
                             "finish or choose another --out-dir (see --help)\n" or "in use by another" in res.stderr
    finally:
        first.kill()
        first.wait()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_FILE).write_text(f"{gone.pid} {os.uname().nodename}\n")
    (folder / ".last.pt.dszoo-abc123.tmp").write_bytes(b"half a checkpoint")  # a write that was killed
    train(TrainConfig(**{**QUICK, "quiet": 1}, epochs=1, out_dir=str(folder)))
    said = capsys.readouterr().out
    assert f"removed the lock of process {gone.pid}, which is no longer running" in said
    assert "removed .last.pt.dszoo-abc123.tmp, left by a write that was killed" in said
    assert not (folder / LOCK_FILE).exists() and not list(folder.glob("*.tmp"))


def test_the_default_folder_skips_one_another_run_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    busy = tmp_path / "runs" / "train"
    busy.mkdir(parents=True)
    (busy / LOCK_FILE).write_text(f"{os.getppid()} {os.uname().nodename}\n")  # a live process
    assert train(TrainConfig(**QUICK, epochs=1)).out_dir == Path("runs/train2")
    assert sorted(p.name for p in busy.iterdir()) == [LOCK_FILE]


def test_a_diverged_run_never_checkpoints_non_finite_weights(tmp_path: Path) -> None:
    with pytest.raises(RunError, match=r"(loss became nan|not finite|validation loss is nan).*(no checkpoint was "
                                       r"written|the last good checkpoint is)"):
        train(TrainConfig(**QUICK, epochs=3, lr=1e30, clip_grad=0, opt="sgd", out_dir=str(tmp_path)))
    for name in ("last.pt", "best.pt"):
        if (tmp_path / name).exists():
            state = torch.load(tmp_path / name, weights_only=True)["model"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_non_finite_weights_after_an_epoch_are_not_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = loop._train_one_epoch

    def poisoned(run: Any, trainer: Any, epoch: int) -> Any:
        row, top1, model = real(run, trainer, epoch)
        if epoch == 1:
            with torch.no_grad():
                model.classifier.weight.fill_(float("inf"))
        return row, top1, model

    monkeypatch.setattr(loop, "_train_one_epoch", poisoned)
    with pytest.raises(RunError, match=r"epoch 2: weights classifier.weight are not finite; not saved, stopped; the "
                                       r"last good checkpoint is .*last.pt"):
        train(TrainConfig(**QUICK, epochs=3, out_dir=str(tmp_path)))
    assert _epoch(tmp_path / "last.pt") == 1


def test_best_is_written_even_at_zero_accuracy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(loop, "evaluate", lambda *args, **kwargs: (2.3, 0.0))
    result = train(TrainConfig(**{**QUICK, "quiet": 1}, epochs=2, out_dir=str(tmp_path)))
    assert (result.best_top1, result.best_epoch) == (0.0, 1)
    assert torch.load(tmp_path / "best.pt", weights_only=True)["epoch"] == 1
    assert f"best val_top1 0.00% (epoch 1); {tmp_path} holds last.pt, best.pt, metrics.csv, args.json, curves.png" \
        in capsys.readouterr().out


def test_eval_only_refuses_a_head_for_other_classes(tmp_path: Path) -> None:
    train(TrainConfig(**QUICK, epochs=1, classes=[0, 1, 2], out_dir=str(tmp_path / "three")))
    with pytest.raises(UsageError, match=r"--eval-only .*last.pt: its model has 3 classes, digits \(.*\) has 10; "
                                         r"evaluate it on data with its classes"):
        train(TrainConfig(**{**QUICK, "max_batches": None}, eval_only=True, pretrained=str(tmp_path / "three" / "last.pt")))


def _image_folder_data(root: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (root / split / label).mkdir(parents=True)
            for i in range(3):
                Image.new("RGB", (12, 12), colour).save(root / split / label / f"{i}.png")


def test_a_bad_image_is_named_and_the_rerun_is_not_refused(tmp_path: Path) -> None:
    data, out = tmp_path / "data", tmp_path / "run"
    _image_folder_data(data)
    (data / "train" / "red" / "empty.png").write_bytes(b"")
    argv = ["--dataset", "imagefolder", "--data-dir", str(data), "--img-size", "16", "--epochs", "1", "-qq",
            "--out-dir", str(out)]
    res = run_in_process("train", argv)
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert res.stderr.startswith(f"error: {data / 'train' / 'red' / 'empty.png'}: not a readable image")
    (data / "train" / "red" / "empty.png").unlink()
    assert run_in_process("train", argv).returncode == 0


def test_an_image_folder_with_a_symlink_loop_reads_each_image_once(tmp_path: Path) -> None:
    _image_folder_data(tmp_path)
    train_dir = tmp_path / "train"
    (train_dir / "red" / "loop").symlink_to(train_dir)  # back up the tree
    (train_dir / "red" / "alias.png").symlink_to(train_dir / "blue" / "0.png")
    samples = _image_folder(train_dir, None).samples
    assert sorted((Path(p).relative_to(train_dir).as_posix(), c) for p, c in samples) == sorted(
        [(f"blue/{i}.png", 0) for i in range(3)] + [(f"red/{i}.png", 1) for i in range(3)])


# --- special files never hang ------------------------------------------------------------------

def _within(seconds: float, fn: Callable[[], Any]) -> BaseException:
    """Run ``fn`` in a daemon thread; it must end (with an error) within ``seconds``."""
    caught: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            caught.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: it hangs"
    assert caught, "no error"
    return caught[0]


def test_a_fifo_or_device_never_hangs(tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    assert "is a FIFO (named pipe), not a regular file" in str(_within(10, lambda: create_model(str(fifo))))
    assert "is a character device, not a regular file" in str(_within(10, lambda: create_model("/dev/zero")))
    err = _within(10, lambda: load_pretrained(create_model("ds_cnn_s"), fifo))
    assert isinstance(err, CheckpointError) and "is a FIFO" in str(err)
    err = _within(10, lambda: read_checkpoint(str(fifo)))
    assert isinstance(err, UsageError) and "is a FIFO" in str(err)
    data = tmp_path / "data"
    _image_folder_data(data)
    os.mkfifo(data / "train" / "red" / "pipe.png")
    err = _within(20, lambda: train(TrainConfig(**QUICK, dataset="imagefolder", data_dir=str(data), epochs=1,
                                                out_dir=str(tmp_path / "run"))))
    assert isinstance(err, UsageError) and "pipe.png: not a readable image" in str(err) and "FIFO" in str(err)


def test_images_are_read_as_a_viewer_shows_them(tmp_path: Path) -> None:
    """A 16-bit grey PNG keeps its shades (PIL's own conversion clips it to white), a photo
    tagged as stored sideways (EXIF orientation 6) is turned upright, and a floating-point image,
    whose range no file states, is refused in one line naming it, rather than read black."""
    import numpy as np
    from PIL import Image

    from dszoo.training.data import _image_folder

    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)).save(folder / "grey16.png")
    sideways = Image.new("RGB", (40, 20), (255, 0, 0))
    sideways.paste((0, 0, 255), (0, 0, 20, 20))  # blue on the left; upright, blue is on top
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways.save(folder / "photo.png", exif=exif.tobytes())
    images = _image_folder(tmp_path / "train", None)
    grey, photo = (np.asarray(images[i][0]) for i in range(2))
    assert grey.shape == (64, 64, 3) and (grey[0, 0, 0], grey[32, 0, 0], grey[-1, -1, 0]) == (0, 128, 255)
    assert photo.shape == (40, 20, 3) and tuple(photo[0, 0]) == (0, 0, 255) and tuple(photo[-1, 0]) == (255, 0, 0)
    Image.fromarray(np.ones((8, 8), np.float32)).save(folder / "float.tiff")
    with pytest.raises(UsageError, match=f"^{re.escape(str(folder / 'float.tiff'))}: a floating-point grey image, "
                                         "whose range \\(0-1\\? 0-255\\?\\) is not known; save it as an 8- or 16-bit image$"):
        _image_folder(tmp_path / "train", None)[0]


def test_a_tiny_config_for_a_huge_network_is_refused_at_once(tmp_path: Path) -> None:
    lines = ["family: bomb", "input_size: [3, 32, 32]", "stem: [{type: conv, out: 8, kernel: 3}]", "stages:",
             "  - &b {type: ds, out: 8, repeat: 1000}"] + ["  - *b"] * 300
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"stages\[0\]: the network would have 301,001 blocks in all, above the limit"):
        create_model(str(path))
    assert time.perf_counter() - start < 2  # nothing was walked, let alone built


# --- one clear line for every bad input --------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("epoch", None, "epoch is missing"),
    ("epoch", "3", "epoch is a str, not a int"),
    ("history", {}, "history is a dict, not a list"),
    ("rng", {"torch": 1}, "rng must hold a torch state tensor"),
])
def test_damaged_checkpoints_name_the_field(tmp_path: Path, field: str, value: Any, message: str) -> None:
    train(TrainConfig(**QUICK, epochs=1, out_dir=str(tmp_path)))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    if value is None:
        del ckpt[field]
    else:
        ckpt[field] = value
    torch.save(ckpt, tmp_path / "damaged.pt")
    res = run_in_process("train", ["--resume", str(tmp_path / "damaged.pt")])
    assert res.returncode == 2 and message in res.stderr and res.stderr.count("\n") == 1


def test_a_resume_after_the_config_was_edited_says_what_changed(tmp_path: Path) -> None:
    config = tmp_path / "net.yaml"
    text = ("family: net\ninput_size: [1, 16, 16]\nstem: [{type: conv, out: 8, kernel: 3, stride: 2}]\n"
            "stages: [{type: ds, out: 16, stride: 2}]\n")
    config.write_text(text)
    train(TrainConfig(model=str(config), epochs=1, quiet=2, max_batches=1, out_dir=str(tmp_path / "run")))
    config.write_text(text.replace("out: 16", "out: 24"))
    with pytest.raises(UsageError, match=r"the model's config changed since the run was saved \(stages\[0\]\.out: 16 "
                                         r"-> 24\)"):
        train(TrainConfig(resume=str(tmp_path / "run" / "last.pt"), epochs=2, quiet=2))


@pytest.mark.parametrize("command, argv, message", [
    ("make_speech_data", ["--out", "{tmp}/d", "--seed", "-1"],
     "error: argument --seed: must be an integer >= 0, got '-1' (see --help)"),
    ("train", ["--seed", "-1"], "error: argument --seed: must be an integer >= 0, got '-1' (see --help)"),
    ("export", ["--model", "mobilenet_v1_025", "--precision", "int8", "--calibration", "imagefolder", "--format",
                "pt2", "--out", "{tmp}/x.pt2"], "error: --calibration imagefolder needs --data-dir DIR"),
    ("summarize", ["--model", "{nul}"],
     "error: {nul}: invalid YAML: offset 9: character #x0000: special characters are not allowed"),
    ("train", ["--fake-size", "10"], "error: --fake-size is for --dataset fake, not digits"),
    ("train", ["--mfcc", "arm_kws"], "error: --mfcc is for --dataset speech_commands, not digits"),
    ("train", ["--augment", "basic"], "error: --augment is for --dataset speech_commands, not digits"),
    ("train", ["--dataset", "fake", "--speech-task", "12"], "error: --speech-task is for --dataset speech_commands, "
                                                              "not fake"),
    ("spot", ["--idle-seconds", "5", "{tmp}/x.wav"],
     "error: --idle-seconds applies to --follow (a WAV file still being written); add --follow or drop it"),
    ("spot", ["--follow", "--idle-seconds", "1e308", "{tmp}/x.wav"],
     "error: argument --idle-seconds: must be at most 3600 (an hour), got '1e308' (see --help)"),
], ids=["seed-data", "seed-train", "export-names-its-own-option", "nul-byte-yaml", "fake-size-on-digits",
        "mfcc-on-digits", "speech-augment-at-its-default-on-digits", "speech-task-on-fake", "idle-without-follow",
        "idle-beyond-an-hour"])
def test_messages_name_the_option_given_in_one_line(tmp_path: Path, command: str, argv: list[str],
                                                   message: str) -> None:
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"family: x\x00\nname: y\n")
    fill = {"tmp": str(tmp_path), "nul": str(nul)}
    res = run_in_process(command, [a.format(**fill) for a in argv])
    assert res.returncode == 2 and res.stderr == message.format(**fill) + "\n"


def _limited_file_size(limit: int) -> Callable[[], None]:
    """A child's ``preexec_fn``: files of at most ``limit`` bytes, and a write past it an error
    (EFBIG) rather than the signal that would kill the child: the failure of a full disk, for a
    test without one."""
    import resource

    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


@pytest.mark.parametrize("argv, written", [
    (["export", "--model", "mobilenet_v1_025", "--format", "torchscript", "--out", "{tmp}/m.pt"], "m.pt"),
    (["train", "--epochs", "1", "--max-batches", "1", "-qq", "--out-dir", "{tmp}/run"], "run/best.pt"),
])
def test_a_write_that_fails_midway_is_one_line_and_leaves_nothing(tmp_path: Path, argv: list[str],
                                                                 written: str) -> None:
    """PyTorch's C++ writers aborted the interpreter (TorchScript, torch.export: exit 134) or
    raised an untyped RuntimeError (a checkpoint) when the disk filled; every file is now
    serialised in memory and written by Python, so the failure is one line naming the file, and
    no part of it (nor a temporary file) is left."""
    script = REPO / "scripts" / f"{argv[0]}.py"
    res = subprocess.run([sys.executable, str(script), *[a.format(tmp=tmp_path) for a in argv[1:]]],
                         capture_output=True, text=True, preexec_fn=_limited_file_size(200_000), timeout=300)
    target = tmp_path / written
    assert res.returncode == 2 and res.stderr.splitlines()[-1] == f"error: {target}: File too large", res.stderr[-2000:]
    assert not target.exists() and not list(target.parent.glob(".*.tmp"))


def test_a_full_disk_names_the_file_it_could_not_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An atomic write that fails inside (ENOSPC has no file name of its own) names its target."""
    import errno

    from dszoo.files import atomic_path

    def full(*_: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "clip.wav"
    with pytest.raises(OSError) as err, atomic_path(target) as tmp:
        Path(tmp).write_bytes(b"x")
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(target)) and not target.exists()
    res = run_in_process("make_speech_data", ["--out", str(tmp_path / "d"), "--speakers", "1", "--words", "yes",
                                              "--engines", "espeak", "-q"])
    assert res.returncode == 2 and res.stderr.startswith(f"error: {tmp_path / 'd'}/") \
        and res.stderr.endswith(": No space left on device\n")
    assert not list((tmp_path / "d").rglob("*.tmp"))


def test_a_class_folder_named_like_mathtext_still_gets_its_score_and_plot(tmp_path: Path) -> None:
    from dszoo.training.run_files import plot_confusion

    plot_confusion(tmp_path, torch.eye(2, dtype=torch.long), ["$\\undefinedcmd$", "ok"], "title")
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--out-dir", ""], "error: --out-dir: must not be empty"),
    (["--resume", ""], "error: --resume: must not be empty"),
    (["--model", " "], "error: --model: must not be empty"),
    (["--epochs", "99999999999"], "error: argument --epochs: must be at most 2,147,483,647"),
    (["--batch-size", "1000000", "--img-size", "224"], "error: --batch-size 1000000 at 1x224x224 needs about"),
    (["--opt", "fusedadam"], "error: --opt fusedadam: timm lists it, but it cannot run here"),
    (["--opt", "adamw_"], "error: --opt adamw_: not a timm optimizer"),
])
def test_bad_option_values_are_one_line(tmp_path: Path, argv: list[str], message: str) -> None:
    res = run_in_process("train", argv, cwd=tmp_path)
    assert res.returncode == 2 and res.stderr.startswith(message) and res.stderr.count("\n") == 1, res.stderr
    assert list(tmp_path.iterdir()) == []


def test_empty_plot_path_and_long_file_names(tmp_path: Path) -> None:
    res = run_in_process("summarize", ["--model", "ds_cnn_s", "--plot", ""])
    assert res.returncode == 2 and res.stderr.startswith("error: --plot: must not be empty")
    longest = tmp_path / ("w" * 240 + ".safetensors")  # 252 characters: its temporary twin must fit too
    with atomic_path(longest) as tmp:
        Path(tmp).write_bytes(b"x")
    assert longest.read_bytes() == b"x"
    too_long = tmp_path / ("w" * 300 + ".safetensors")
    res = run_in_process("convert_weights", [str(longest), str(too_long), "--model", "ds_cnn_s"])
    assert res.returncode == 2 and res.stderr.count("\n") == 1


@pytest.mark.parametrize("make_bad, message", [
    (lambda t: torch.full_like(t, float("nan")), "holds NaN or infinite values"),
    (lambda t: t.long(), "is int64, the model holds float32"),
    (lambda t: t > 0, "is bool, the model holds float32"),
    (lambda t: t.to(torch.complex64), "is complex64, the model holds float32"),
    (lambda t: t.to("meta"), "is a meta tensor, which holds no values"),
    (lambda t: t.to_sparse(), "is a sparse_coo tensor, not a dense one"),
], ids=["nan", "int", "bool", "complex", "meta", "sparse"])
def test_weights_of_the_wrong_kind_are_refused_with_the_key(tmp_path: Path, make_bad: Callable, message: str) -> None:
    state = create_model("ds_cnn_s").state_dict()
    state["classifier.weight"] = make_bad(state["classifier.weight"])
    torch.save(state, tmp_path / "w.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's own warnings (a sparse tensor's) never precede the error line
        with pytest.raises(CheckpointError, match=f"classifier.weight {message}"):
            load_pretrained(create_model("ds_cnn_s"), tmp_path / "w.pt")


@given(key=st.sampled_from(sorted(create_model("ds_cnn_s").state_dict())),
       kind=st.sampled_from(["nan", "inf", "int", "bool", "complex", "meta"]))
@settings(max_examples=40)
def test_any_key_of_the_wrong_kind_is_named(tmp_path_factory: pytest.TempPathFactory, key: str, kind: str) -> None:
    """Every tensor of a state dict, made non-finite or of another kind: refused naming that key
    (an integer counter such as num_batches_tracked only where the model holds floats)."""
    state = create_model("ds_cnn_s").state_dict()
    value = state[key]
    if not value.is_floating_point() and kind in ("nan", "inf", "int"):
        return  # an integer buffer: NaN, inf and int are what it should hold or cannot hold
    bad = {"nan": lambda t: torch.full_like(t, float("nan")), "inf": lambda t: torch.full_like(t, float("inf")),
           "int": lambda t: t.long(), "bool": lambda t: t > 0, "complex": lambda t: t.to(torch.complex64),
           "meta": lambda t: t.to("meta")}[kind]
    state[key] = bad(value)
    path = tmp_path_factory.mktemp("w") / "w.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=f"{key} (is|holds)"):
        load_pretrained(create_model("ds_cnn_s"), path)


def _inflating_checkpoint(path: Path) -> None:
    """A small torch zip whose pickle, deflated, declares 32 MiB: a list of 16 M small ints."""
    import zipfile

    body = b"\x80\x02]q\x00(" + b"K\x01" * (16 * 2**20) + b"e."
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", body)
        archive.writestr("archive/version", "3\n")


def _export_program(path: Path) -> None:
    ep = torch.export.export(torch.nn.Linear(2, 2), (torch.randn(1, 2),))
    torch.export.save(ep, str(path))


@pytest.mark.parametrize("make, name, reason", [
    (_inflating_checkpoint, "big.pt", "its pickle archive/data.pkl declares 33,554,440 bytes, more than the 16 MiB a "
                                      "checkpoint needs; refused unread"),
    (lambda p: p.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x032.0"), "model.onnx",
     "an ONNX model, not weights; pass a .pt checkpoint or a .safetensors file"),
    (lambda p: p.write_bytes(b"\x08\x07\x12\x07pytorch\x1a\x032.0"), "renamed.pt",
     "neither torch.save's zip archive nor a pickle"),
    (_export_program, "program.pt2", "a torch.export program (.pt2), not weights; pass a .pt checkpoint or a "
                                     ".safetensors file"),
], ids=["inflating", "onnx", "not-a-pickle", "pt2"])
def test_files_that_are_not_weights_are_refused_before_unpickling(tmp_path: Path, make: Callable, name: str,
                                                                   reason: str) -> None:
    """Refused from the file's own structure, quickly, in one line with no torch warning before it
    (by ``--pretrained`` and by ``--resume``)."""
    path = tmp_path / name
    make(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(CheckpointError) as err:
            load_pretrained(create_model("ds_cnn_s"), path)
    assert str(err.value) == f"{path}: not a readable PyTorch checkpoint ({reason})"
    res = run_in_process("train", ["--resume", str(path)])
    assert res.returncode == 2 and res.stderr == f"error: --resume {path}: not a readable training checkpoint ({reason})\n"


@by_name(structural_variants())  # the dtype check depends on the network, not its widths
def test_inputs_of_another_precision_are_refused_clearly(built: torch.nn.Module) -> None:
    model = built
    size = small_input_size(model.cfg)
    for dtype in (torch.float64, torch.float16, torch.bfloat16):
        with pytest.raises(TypeError, match=f"expected a float32 input, the dtype of the model's weights, got "
                                            f"{str(dtype).removeprefix('torch.')}; convert the input"):
            model(torch.randn(1, *size, dtype=dtype))
    as_double = {k: v.double() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    with torch.no_grad():  # the model in float64 (its own weights stay float32: it is shared)
        out = torch.func.functional_call(model, as_double, torch.randn(2, *size, dtype=torch.float64))
    assert out.dtype == torch.float64


def test_training_one_image_through_a_normalised_head_is_refused_clearly() -> None:
    model = create_model("mobilenet_v4_conv_small", input_size=64)
    with pytest.raises(ValueError, match=r"mobilenet_v4_conv_small normalises its pooled features \(a BatchNorm in its "
                                         r"head\): in training mode it needs a batch of at least 2 images, got 1"):
        model(torch.randn(1, 3, 64, 64))
    assert model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize("backend", ["onednn_graph", "inductor", "torchscript", "eager"])
def test_every_backend_keeps_input_checks_and_nan(backend: str) -> None:
    model = randomise_batchnorm_statistics(create_model("mobilenet_v1_025", input_size=32))
    fast = optimize_for_inference(model, torch.randn(2, 3, 32, 32), backends=(backend,), memory_format="contiguous")
    assert fast.backend == backend
    with pytest.raises(ValueError, match=r"expected 3 input channels \(in_chans=3\), got 1"):
        fast(torch.randn(2, 1, 32, 32))
    with pytest.raises(TypeError, match="expected a float32 input"):
        fast(torch.randn(2, 3, 32, 32, dtype=torch.float64))
    x = torch.randn(2, 3, 32, 32)
    x[0, 1, 5, 5] = float("nan")
    with torch.no_grad():
        eager, out = model(x), fast(x)
    assert eager[0].isnan().all() and out[0].isnan().all()  # as eager: NaN in, NaN out
    assert torch.allclose(out[1], eager[1], rtol=1e-3, atol=1e-5)


def test_a_checkpoint_carries_its_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--eval-only, dszoo-export --pretrained and dszoo-spot's loader build the network from the
    checkpoint's own config: no --model, --num-classes or --input-size, the same answers after the
    registry's YAML is edited (with a note saying so), and hand-edited class_names refused."""
    from dszoo import registry
    from dszoo.audio.spot import load_spotter

    train(TrainConfig(**QUICK, epochs=1, classes=[0, 1, 2], out_dir=str(tmp_path / "run")))
    ckpt = tmp_path / "run" / "best.pt"
    first = run_in_process("train", ["--eval-only", "--pretrained", str(ckpt), "--classes", "0,1,2",
                                     "--model", "ds_cnn_s"])
    assert first.returncode == 0, first.stderr
    assert "note: the checkpoint holds mobilenet_v1_025; evaluating that (not --model ds_cnn_s)" in first.stdout
    score = first.stdout.splitlines()[-1].split("val_top1")[1]
    exported = run_in_process("export", ["--pretrained", str(ckpt), "--format", "torchscript", "--out",
                                         str(tmp_path / "m.pt")])
    assert exported.returncode == 0, exported.stderr
    assert "(fp32 torchscript, input 1x16x16, dynamic batch" in exported.stdout

    entry = registry._REGISTRY["mobilenet_v1_025"]  # the YAML edited: the first stage twice as wide
    stages = [dict(s) for s in entry.defaults["stages"]]
    stages[0]["out"] = 128
    monkeypatch.setitem(registry._REGISTRY, "mobilenet_v1_025",
                        registry._Entry(entry.family, {**entry.defaults, "stages": stages}, entry.variant, entry.source))
    again = run_in_process("train", ["--eval-only", "--pretrained", str(ckpt), "--classes", "0,1,2"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.splitlines()[-1].split("val_top1")[1] == score
    assert ("note: built mobilenet_v1_025 from the checkpoint's own config, which differs from the registry's now "
            "(registry -> checkpoint: stages[0].out: 128 -> 64)") in again.stdout
    named = tmp_path / "named.pt"  # a spotter's checkpoint names its classes
    torch.save({**torch.load(ckpt, weights_only=True), "class_names": ["0", "1", "2"]}, named)
    spotter = load_spotter(named)
    assert spotter.model.stages[0][0].pw.conv.out_channels == 16 and spotter.notes[0].startswith(
        "built mobilenet_v1_025 from the checkpoint's own config")  # 64 x 0.25, as trained

    wrong_data = run_in_process("export", ["--pretrained", str(ckpt), "--format", "pt2", "--out", str(tmp_path / "q.pt2"),
                                           "--precision", "int8", "--calibration", "speech_commands"])
    assert wrong_data.returncode == 2 and wrong_data.stderr.startswith(
        f"error: --calibration speech_commands: --pretrained {ckpt} was trained on digits; calibrate int8 on that data")
    saved = torch.load(ckpt, weights_only=True)
    for bad in (["0", "1"], ["0", "1", 2], ["0", "0", "1"], "012"):
        torch.save({**saved, "class_names": bad}, tmp_path / "bad.pt")
        res = run_in_process("export", ["--pretrained", str(tmp_path / "bad.pt"), "--format", "torchscript", "--out",
                                        str(tmp_path / "b.pt")])
        assert res.returncode == 2 and res.stderr == (
            f"error: --pretrained {tmp_path / 'bad.pt'}: class_names must be 3 distinct non-empty names, one per output "
            f"of the model, got {bad}\n")


def test_export_never_replaces_a_file_that_appears_meanwhile_and_clears_stale_temporaries(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--out is checked again at the atomic link, not only at the start: a file created there
    during the export is kept and the command says so; temporary files of ours that a killed
    export left (untouched for an hour) are removed, a fresh one (another export at work) kept."""
    from dszoo.deployment import export as export_module

    out = tmp_path / "kws.pt"
    stale, fresh = tmp_path / ".kws.pt.dszoo-dead1234.tmp", tmp_path / ".kws.pt.dszoo-live5678.tmp"
    users = tmp_path / ".kws.pt.mine.tmp"  # the user's own, named like a temporary file of another program
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y")
    users.write_bytes(b"mine")
    for old in (stale, users):
        os.utime(old, (time.time() - 7200, time.time() - 7200))
    real = export_module._fp32_checked

    def racing(*args: Any, **kwargs: Any) -> float:
        result = real(*args, **kwargs)
        if not out.exists():
            out.write_text("the user's own file")
        return result

    monkeypatch.setattr(export_module, "_fp32_checked", racing)
    res = run_in_process("export", ["--model", "ds_cnn_s", "--format", "torchscript", "--out", str(out)])
    assert res.returncode == 2 and res.stderr == (f"error: --out {out}: a file appeared there while exporting; it was "
                                                  "kept and nothing was written (pass --overwrite to replace it)\n")
    assert out.read_text() == "the user's own file"
    assert f"note: removed {stale}, left by an export that was killed" in res.stdout
    assert not stale.exists() and fresh.exists() and users.read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, users.name, out.name])  # none of this run


def test_a_killed_qat_run_resumes_bit_identically(tmp_path: Path, default_run: tuple[Path, Any],
                                                  qat_run: tuple[Path, Any]) -> None:
    """--qat keeps the fake-quantized graph's own state (observers' ranges, scales, zero points)
    in its checkpoints: SIGKILLed after epoch 1 and resumed, a --deterministic run ends with the
    same weights and quantizer state as an uninterrupted one (it did not, before)."""
    out, _ = default_run
    full_run, finished = qat_run
    assert finished.returncode == 0, finished.stderr
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *QAT_ARGS, "--pretrained",
                             str(out / "best.pt"), "-qq", "--out-dir", str(tmp_path / "killed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(tmp_path / "killed" / "last.pt", weights_only=True)["epoch"] == 1
    assert run_in_process("train", ["--resume", str(tmp_path / "killed" / "last.pt"), "-qq"]).returncode == 0
    full, resumed = (torch.load(folder / "last.pt", weights_only=True) for folder in (full_run, tmp_path / "killed"))
    assert full["epoch"] == resumed["epoch"] == 2 and len(full["qat"]) > 100
    for part in ("model", "qat"):
        assert full[part].keys() == resumed[part].keys()
        assert all(torch.equal(full[part][k], resumed[part][k]) for k in full[part]), part
