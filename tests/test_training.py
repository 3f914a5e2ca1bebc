"""Fine-tuning: the default run, transfer, exact resume after SIGKILL, DDP, freezing, errors."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import run_in_process
from dszoo import create_model, load_pretrained
from dszoo.errors import RunError, UsageError
from dszoo.registry import model_from_checkpoint
from dszoo.training.data import build_datasets
from dszoo.commands.train import build_parser
from dszoo.training import TrainConfig, evaluate, train, uses_channels_last, validation_shard

REPO = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(REPO / "scripts" / "train.py")]
# A quick configuration: the smallest MobileNet on 16x16 digits.
QUICK = dict(model="mobilenet_v1_025", img_size=16, warmup_epochs=0, quiet=True)


def rows(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_default_run_reaches_93_percent_on_digits(default_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    """The README's main job, exactly as a user runs it (only the output folder differs)."""
    out, res = default_run
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = rows(out / "metrics.csv")
    assert len(metrics) == 15
    assert float(metrics[-1]["val_top1"]) >= 93.0
    epoch_lines = [l for l in res.stdout.splitlines() if l.startswith("epoch ")]
    assert len(epoch_lines) == 15 and all(" lr " in l and "val_loss" in l for l in epoch_lines)
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"
    args = json.loads((out / "args.json").read_text())
    assert args["model"] == "mobilenet_v1_025" and args["dataset"] == "digits"
    best = torch.load(out / "best.pt", weights_only=True)
    assert round(best["best_top1"], 4) == max(float(r["val_top1"]) for r in metrics)


def test_finetuning_beats_scratch(tmp_path: Path) -> None:
    """Pretrain on digits 0-4, fine-tune on 5-9 with a new 5-class head: better than scratch."""
    pre = train(TrainConfig(**QUICK, classes=[0, 1, 2, 3, 4], epochs=5, out_dir=str(tmp_path / "pre")))
    assert pre.best_top1 > 80
    common = dict(**QUICK, classes=[5, 6, 7, 8, 9], epochs=2)
    tuned = train(TrainConfig(**common, pretrained=str(tmp_path / "pre" / "last.pt"), out_dir=str(tmp_path / "ft")))
    scratch = train(TrainConfig(**common, out_dir=str(tmp_path / "scratch")))
    print(f"fine-tuned {tuned.val_top1:.2f}% vs scratch {scratch.val_top1:.2f}% after 2 epochs")
    assert tuned.val_top1 > scratch.val_top1 + 10


def _final_state(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "last.pt", weights_only=True)["model"]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path: Path) -> None:
    # --mixup: its weights come from NumPy's generator, which the checkpoint restores too
    args = ["--img-size", "16", "--epochs", "4", "--max-batches", "8", "--deterministic", "--quiet", "--ema",
            "--mixup", "0.4"]
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert run_in_process("train", args + ["--out-dir", str(full)]).returncode == 0  # only the killed run needs a process
    proc = subprocess.Popen(TRAIN + args + ["--out-dir", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (killed / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = torch.load(killed / "last.pt", weights_only=True)["epoch"]
    assert stopped_at < 4, "killed too late to test a resume"
    res = run_in_process("train", ["--resume", str(killed / "last.pt"), "--quiet"])
    assert res.returncode == 0, res.stderr
    a, b = _final_state(full), _final_state(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows(full / "metrics.csv")) == strip(rows(killed / "metrics.csv"))
    # what the run validated with is what a finished checkpoint gives (export, spotting, --pretrained)
    saved = torch.load(full / "last.pt", weights_only=True)
    model, _ = model_from_checkpoint(saved, "last.pt")
    ema = {k.removeprefix("module."): v for k, v in saved["ema"].items()}
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    assert not all(torch.equal(v, saved["model"][k]) for k, v in model.state_dict().items())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = nn.CrossEntropyLoss.forward

    def flaky(self, logits, target):
        calls["n"] += 1
        loss = real(self, logits, target)
        return loss * float("nan") if calls["n"] > 3 else loss

    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", flaky)
    with pytest.raises(RunError, match=r"loss became nan at epoch 2, step 1; stopped, the last good checkpoint is .*last.pt"):
        train(TrainConfig(**QUICK, epochs=3, max_batches=3, out_dir=str(tmp_path)))
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


def test_freeze_backbone_keeps_weights_and_bn_statistics(tmp_path: Path) -> None:
    train(TrainConfig(**QUICK, epochs=1, max_batches=4, out_dir=str(tmp_path / "a")))
    before = torch.load(tmp_path / "a" / "last.pt", weights_only=True)["model"]
    train(TrainConfig(**QUICK, epochs=1, max_batches=4, pretrained=str(tmp_path / "a" / "last.pt"),
                      freeze="backbone", out_dir=str(tmp_path / "b")))
    after = torch.load(tmp_path / "b" / "last.pt", weights_only=True)["model"]
    backbone = [k for k in before if not k.startswith("classifier.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(before[k], after[k]) for k in backbone)
    assert not torch.equal(before["classifier.weight"], after["classifier.weight"])


def test_freeze_stages_k_and_bad_spec(tmp_path: Path) -> None:
    train(TrainConfig(**QUICK, epochs=1, max_batches=2, freeze="stages:2", out_dir=str(tmp_path / "a")))
    with pytest.raises(UsageError, match="--freeze must be none, backbone or stages:K with K in 0..5, got 'stages:9'"):
        train(TrainConfig(**QUICK, epochs=1, freeze="stages:9", out_dir=str(tmp_path / "b")))


def test_eval_only_reproduces_the_logged_accuracy(default_run: tuple[Path, subprocess.CompletedProcess]) -> None:
    out, _ = default_run
    evaluated = train(TrainConfig(eval_only=True, pretrained=str(out / "best.pt"), quiet=2))
    assert evaluated.val_top1 == pytest.approx(torch.load(out / "best.pt", weights_only=True)["best_top1"], abs=1e-9)


def test_torchrun_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "train.py"), "--img-size", "16", "--epochs", "4", "--warmup-epochs", "0", "--precise-bn",
           "--quiet", "--out-dir", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((out / "args.json").read_text())["world_size"] == 2
    last = rows(out / "metrics.csv")[-1]
    logged = float(last["val_top1"])
    model = create_model("mobilenet_v1_025", in_chans=1, input_size=16, num_classes=10)
    load_pretrained(model, out / "last.pt")
    data = build_datasets("digits", model.pretrained_cfg)
    loss, top1 = evaluate(model, torch.utils.data.DataLoader(data.val, batch_size=128), torch.device("cpu"))
    # each process validated half the set; the figures logged are those of the whole set
    assert round(top1, 4) == logged
    assert float(last["val_loss"]) == pytest.approx(loss, abs=2e-6)
    # --precise-bn: the BatchNorm statistics, recomputed on each shard and taken from rank 0, fit the weights
    # (without it, after 3 epochs they still lagged: 24% on one CPU, above 30% on another); chance is 10%
    assert logged > 40, "the two processes trained one model together (chance is 10%)"


@pytest.mark.parametrize("size, world", [(10, 1), (10, 3), (2, 4)])
def test_validation_shards_partition_the_set(size: int, world: int) -> None:
    """Under torchrun each process validates its shard; together they hold every example once."""
    data = torch.utils.data.TensorDataset(torch.arange(size))
    shards = [[int(x) for (x,) in validation_shard(data, rank, world)] for rank in range(world)]
    assert sorted(sum(shards, [])) == list(range(size))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_fake_data_with_amp_channels_last_ema(tmp_path: Path) -> None:
    result = train(TrainConfig(model="ds_cnn_s", dataset="fake", fake_size=32, img_size=None, in_chans=3,
                               epochs=1, batch_size=8, amp=True, channels_last=True, ema=True, quiet=True,
                               out_dir=str(tmp_path)))
    assert len(result.history) == 1 and (tmp_path / "best.pt").exists()


@pytest.mark.parametrize("batch", [4, 3, 1])
def test_mixup_mixes_each_example_with_its_mirror(batch: int) -> None:
    """``--mixup``: x_i becomes lam x_i + (1 - lam) x_(n-1-i), its target the same mix of the two
    smoothed one-hot targets; the last example of an odd batch stays as it is."""
    import numpy as np
    from timm.loss import SoftTargetCrossEntropy

    from dszoo.training.loop import _mixup_and_criterion, mix_batch

    plain, ce = _mixup_and_criterion(TrainConfig(label_smoothing=0.1), num_classes=5)
    assert plain is None and isinstance(ce, nn.CrossEntropyLoss) and ce.label_smoothing == 0.1
    mixup, soft = _mixup_and_criterion(TrainConfig(mixup=0.4, label_smoothing=0.1), num_classes=5)
    assert isinstance(soft, SoftTargetCrossEntropy)
    x, y = torch.randn(batch, 1, 6, 4), torch.arange(batch)
    np.random.seed(0)  # a weight of 0.61 (seed 1 draws 1 - 3e-10: the batch unmixed to float precision)
    mixed, target = mix_batch(mixup, x.clone(), y)
    assert mixed.shape == x.shape and target.shape == (batch, 5)
    assert torch.allclose(target.sum(1), torch.ones(batch))
    smoothed = torch.full((batch, 5), 0.02).scatter_(1, y[:, None], 0.92)  # 0.1 spread over 5 classes
    even = batch - batch % 2
    if batch % 2:
        assert torch.equal(mixed[-1], x[-1]) and torch.allclose(target[-1], smoothed[-1])
    if even:
        lam = float(target[0, 0] - 0.02) / 0.9
        assert 0.6 < lam < 0.61
        assert torch.allclose(mixed[:even], lam * x[:even] + (1 - lam) * x[:even].flip(0), atol=1e-6)
        assert torch.allclose(target[:even], lam * smoothed[:even] + (1 - lam) * smoothed[:even].flip(0), atol=1e-6)


@pytest.mark.parametrize("flags, expected", [([], True), (["--channels-last"], True), (["--no-channels-last"], False)])
def test_channels_last_is_on_by_default_on_cpu(tmp_path: Path, flags: list[str], expected: bool) -> None:
    cfg = TrainConfig(**vars(build_parser().parse_args(flags)))
    assert cfg.channels_last == (None if not flags else expected)
    assert uses_channels_last(cfg, torch.device("cpu")) is expected
    assert uses_channels_last(cfg, torch.device("cuda")) is expected  # on for GPUs too unless refused
    train(dataclasses.replace(cfg, **QUICK, epochs=1, max_batches=1, out_dir=str(tmp_path)))
    weight = _final_state(tmp_path)["stages.0.0.pw.conv.weight"]  # [16, 8, 1, 1]: the layout shows in its strides
    assert (weight.stride() == torch.empty(weight.shape, memory_format=torch.channels_last).stride()) is expected


@pytest.mark.parametrize("flags", [
    [],
    ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--data-dir", "/home/me/data/speech", "--epochs", "40",
     "--augment", "voices", "--unknown-ratio", "0.5", "--out-dir", "runs/x", "-q"],
    ["--classes", "0,1,2", "--ema", "--no-channels-last", "--lr", "0.003", "--pretrained", "/tmp/w b.safetensors",
     "--mixup", "0.2"],
])
def test_a_recipe_is_the_command_line_that_trains_the_same_way(flags: list[str]) -> None:
    """``recipe(config)`` (a spotter's card): a ``dszoo-train`` line that parses back to the
    same options, where a run went and what it printed aside, files and folders by name."""
    import shlex

    from dszoo.commands.train import recipe

    parser = build_parser()
    options = vars(parser.parse_args(flags))
    line = recipe(options)
    assert line.startswith("dszoo-train") and "/" not in line and "runs/x" not in line and "-q" not in line.split()
    again = vars(parser.parse_args(shlex.split(line)[1:]))
    for name in ("data_dir", "pretrained"):
        assert again[name] == (None if options[name] is None else Path(options[name]).name)
    aside = {"data_dir", "pretrained", "out_dir", "resume", "overwrite", "quiet"}
    assert {k: v for k, v in again.items() if k not in aside} == {k: v for k, v in options.items() if k not in aside}
    assert recipe(vars(parser.parse_args([]))) == "dszoo-train"


def test_imagefolder(tmp_path: Path) -> None:
    from PIL import Image

    for split in ("train", "val"):
        for label, colour in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
            (tmp_path / "data" / split / label).mkdir(parents=True)
            for i in range(6):
                Image.new("RGB", (20, 20), colour).save(tmp_path / "data" / split / label / f"{i}.png")
    result = train(TrainConfig(model="mobilenet_v1_025", dataset="imagefolder", data_dir=str(tmp_path / "data"),
                               img_size=32, epochs=3, batch_size=4, warmup_epochs=0, quiet=True, out_dir=str(tmp_path / "run")))
    assert len(result.history) == 3 and 0 <= result.history[-1]["val_top1"] <= 100
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["model"]["classifier.weight"].shape == (2, 256)  # two classes found on disk


def one_line_error(args: list[str], cwd: Path) -> str:
    res = run_in_process("train", args, cwd=cwd)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr and res.stderr.count("\n") == 1
    return res.stderr.strip()


@pytest.mark.parametrize("args,message", [
    (["--dataset", "imagefolder", "--data-dir", "missing"], "error: --data-dir missing: no such directory"),
    (["--dataset", "cifar10"], "error: --dataset cifar10 needs --data-dir DIR"),
    (["--dataset", "mnist"], "error: argument --dataset: invalid choice: 'mnist'"),
    (["--model", "mobilenetv1"], "error: unknown model 'mobilenetv1'; did you mean 'mobilenet_v1'"),
    (["--num-classes", "7"], "error: --num-classes 7 disagrees with digits (1437 train / 360 val, 10 classes): it has 10 classes"),
    (["--pretrained", "corrupt.pt"], "error: corrupt.pt: not a readable PyTorch checkpoint"),
    (["--resume", "corrupt.pt"], "error: --resume corrupt.pt: not a readable training checkpoint"),
    (["--eval-only"], "error: --eval-only needs --pretrained PATH"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 truncated")
    assert one_line_error(args + ["--epochs", "1"], tmp_path).startswith(message)


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"the user's earlier run")
    message = one_line_error(["--out-dir", str(out), "--epochs", "1"], tmp_path)
    assert message.startswith(f"error: {out} holds another run (last.pt); pass --resume")
    assert (out / "last.pt").read_bytes() == b"the user's earlier run"


@pytest.mark.parametrize("files", [["args.json", "curves.png"], ["confusion.png", "int8.pt2"], ["metrics.csv"]])
def test_a_folder_with_files_a_run_writes_is_not_written_over(tmp_path: Path, files: list[str]) -> None:
    """Any file a run would write, the user's own included (a hand-written args.json, a plot, an
    int8 model), keeps a new run out of the folder unless --overwrite; the args.json a run
    wrote before stopping in its first epoch does not."""
    out = tmp_path / "proj"
    out.mkdir()
    for name in files:
        (out / name).write_text(f"the user's {name}")
    message = one_line_error(["--out-dir", str(out), "--epochs", "1"], tmp_path)
    if "metrics.csv" in files:
        assert message.startswith(f"error: {out} holds another run (metrics.csv)")
    else:
        assert message == (f"error: {out} holds {', '.join(files)}, which a run there would replace; pass --overwrite "
                           "to replace them, or choose another --out-dir")
    assert all((out / name).read_text() == f"the user's {name}" for name in files)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    (stopped / "args.json").write_text(json.dumps({"model": "mobilenet_v1_025", "dataset": "digits", "world_size": 1,
                                                   "dataset_info": "digits"}))
    train(TrainConfig(**QUICK, epochs=1, max_batches=1, out_dir=str(stopped)))
    assert (stopped / "last.pt").exists()


def test_default_out_dir_never_reuses_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    first = train(TrainConfig(**QUICK, epochs=1, max_batches=1))
    second = train(TrainConfig(**QUICK, epochs=1, max_batches=1))
    assert (first.out_dir, second.out_dir) == (Path("runs/train"), Path("runs/train2"))
    assert (tmp_path / "runs" / "train" / "last.pt").exists() and (tmp_path / "runs" / "train2" / "last.pt").exists()


def test_cifar10_from_local_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CIFAR-10's python batches on disk (tiny stand-ins; their checksums are waived)."""
    import pickle

    import numpy as np
    from torchvision.datasets import CIFAR10

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": list(range(4))}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    import torchvision.datasets.cifar as cifar_module

    monkeypatch.setattr(cifar_module, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    result = train(TrainConfig(model="ds_cnn_s", dataset="cifar10", data_dir=str(tmp_path / "cifar"), in_chans=3,
                               img_size=32, epochs=1, batch_size=8, quiet=True, out_dir=str(tmp_path / "run")))
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert len(result.history) == 1 and best["model"]["classifier.weight"].shape == (10, 64)
    assert json.loads((tmp_path / "run" / "args.json").read_text())["dataset_info"].startswith("CIFAR-10")


def test_warm_up_scales_to_the_runs_length(tmp_path: Path, recwarn: pytest.WarningsRecorder) -> None:
    """--warmup-epochs 1 of a one-epoch run is a tenth of its steps, and the cosine schedule then
    anneals over optimizer steps (timm's "no effect" warning came from an all-warm-up run)."""
    from dszoo.training.loop import warmup_steps

    assert [warmup_steps(1, 44, 1), warmup_steps(1, 44, 15), warmup_steps(3, 44, 15), warmup_steps(0, 44, 1)] == \
        [4, 44, 66, 0]
    result = train(TrainConfig(**{**QUICK, "warmup_epochs": 1}, epochs=2, max_batches=10, out_dir=str(tmp_path)))
    # 20 steps: 2 of warm-up from lr/10, then cosine from lr to lr/100 over 18; epoch 2 starts at step 10
    lr, low = 1e-2, 1e-4
    assert result.history[0]["lr"] == pytest.approx(lr * 0.1)
    assert result.history[1]["lr"] == pytest.approx(low + 0.5 * (lr - low) * (1 + math.cos(math.pi * 8 / 18)))
    assert not [w for w in recwarn if "no effect" in str(w.message)]
