"""From a trained run to a model in Python: ``load_checkpoint`` and ``create_model(checkpoint_path=)``
rebuild exactly what a run saved, ``pretrained=`` keeps a run's trained head, pretrained first
convs adapt to other input channels, timm's names and ``list_models(pretrained=True)``, and
timm's model API beyond the basics (``forward_intermediates``, gradient checkpointing, parameter
groups, weight-decay exclusions)."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import timm
import torch

from conftest import by_name, small_input_size, structural_variants
from dszoo import ZooFeatures, ZooNet, create_model, get_model_config, list_models, load_checkpoint
from dszoo.registry import timm_aliases
from dszoo.training import TrainConfig, train
from dszoo.weights import CheckpointError

QUICK = dict(model="mobilenet_v1_025", img_size=16, warmup_epochs=0, quiet=2, max_batches=4, epochs=1)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1-channel, 4-class digits run with EMA: what a user trains and then wants back."""
    out = tmp_path_factory.mktemp("run")
    train(TrainConfig(**QUICK, classes=[0, 1, 2, 3], in_chans=1, ema=True, out_dir=str(out)))
    return out


def test_load_checkpoint_rebuilds_the_trained_model_exactly(digits_run: Path) -> None:
    model = load_checkpoint(digits_run / "best.pt")
    saved = torch.load(digits_run / "best.pt", weights_only=True)
    assert not model.training and model.num_classes == 4 and model.in_chans == 1
    assert model.pretrained_cfg["class_names"] == ["0", "1", "2", "3"]
    assert model.pretrained_cfg["input_size"] == (1, 16, 16)
    ema = {k.removeprefix("module."): v for k, v in saved["ema"].items()}
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())  # the averaged weights
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_create_model_with_checkpoint_path_is_load_checkpoint(digits_run: Path) -> None:
    ckpt = digits_run / "best.pt"
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(create_model("mobilenet_v1_025", checkpoint_path=ckpt)(x), load_checkpoint(ckpt)(x))
    with pytest.raises(CheckpointError, match=r"best.pt: holds a trained mobilenet_v1_025, not mobilenet_v1$"):
        create_model("mobilenet_v1", checkpoint_path=ckpt)
    with pytest.raises(ValueError, match=r"pass no pretrained or overrides with it \(given: num_classes\)"):
        create_model("mobilenet_v1_025", checkpoint_path=ckpt, num_classes=3)


def test_pretrained_from_a_run_keeps_its_head_and_channels(digits_run: Path) -> None:
    """``pretrained=`` a run's checkpoint without ``num_classes``: the trained head and its one
    input channel are kept (they were replaced, or refused, before); overrides still win."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "head was freshly initialised"
        model = create_model("mobilenet_v1_025", pretrained=digits_run / "last.pt")
    from dszoo.weights import measured_weights

    saved = measured_weights(torch.load(digits_run / "last.pt", weights_only=True))  # its EMA's: the run has --ema
    assert model.num_classes == 4 and model.in_chans == 1 and model.pretrained_cfg["class_names"] == ["0", "1", "2", "3"]
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    with pytest.warns(UserWarning, match="the head was freshly initialised"):
        seven = create_model("mobilenet_v1_025", pretrained=digits_run / "last.pt", num_classes=7)
    assert seven.num_classes == 7 and "class_names" not in seven.pretrained_cfg  # the names went with the head


@pytest.mark.parametrize("in_chans", [1, 4])
def test_pretrained_weights_adapt_to_other_input_channels_as_timm_does(in_chans: int, tmp_path: Path) -> None:
    source = tmp_path / "mnv1.pth"
    torch.save(timm.create_model("mobilenetv1_100").state_dict(), source)
    with pytest.warns(UserWarning, match=f"adapted from 3 to {in_chans} input channels"):
        ours = create_model("mobilenet_v1", in_chans=in_chans, input_size=64, pretrained=source).eval()
    theirs = timm.create_model("mobilenetv1_100", in_chans=in_chans).eval()
    from timm.models._manipulate import adapt_input_conv

    state = torch.load(source, weights_only=True)
    state["conv_stem.weight"] = adapt_input_conv(in_chans, state["conv_stem.weight"])
    theirs.load_state_dict(state)
    x = torch.randn(2, in_chans, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


def test_timm_names_are_aliases_of_ours() -> None:
    aliases = timm_aliases()
    assert aliases["mobilenetv3_small_100"] == "mobilenet_v3_small" and aliases["legacy_xception"] == "xception"
    assert len(aliases) == len([n for n in list_models() if get_model_config(n).timm_name])
    for theirs, ours in aliases.items():
        assert get_model_config(theirs) == get_model_config(ours)
    assert create_model("tf_efficientnet_b0", num_classes=3).cfg.name == "efficientnet_b0_tf"


def test_list_models_pretrained_lists_what_pretrained_true_can_load() -> None:
    with_weights = list_models(pretrained=True)
    assert "ds_cnn_s" in with_weights and "mobilenet_v1" in with_weights and "xception" in with_weights
    assert "ds_cnn_m" not in with_weights and "mobilenet_v1_025" not in with_weights
    timm_published = {name.split(".")[0] for name in timm.list_models(pretrained=True)}
    assert with_weights == [n for n in list_models() if get_model_config(n).bundled_weights
                            or get_model_config(n).timm_name in timm_published]
    assert list_models("mobilenet_v3*", pretrained=True) == [n for n in with_weights if n.startswith("mobilenet_v3")]


@by_name(structural_variants())
def test_forward_intermediates_are_the_feature_maps(built: ZooNet) -> None:
    model = built
    x = torch.randn(1, *small_input_size(model.cfg))
    levels = len(model.feature_info)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x)
        features = ZooFeatures(model, tuple(range(levels)))(x)
        assert torch.equal(final, model.forward_features(x))
        assert len(maps) == levels and all(torch.equal(a, b) for a, b in zip(maps, features))
        last = model.forward_intermediates(x, indices=min(2, levels), intermediates_only=True)
        assert [m.shape for m in last] == [m.shape for m in maps[-min(2, levels):]]
        early, first = model.forward_intermediates(x, indices=[0], stop_early=True)
        assert torch.equal(early, maps[0]) and torch.equal(first[0], maps[0])


def test_gradient_checkpointing_gives_the_same_gradients() -> None:
    model = create_model("mobilenet_v2_035", input_size=32, drop_rate=0.0).train()
    x = torch.randn(4, 3, 32, 32)
    model(x).sum().backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing()
    model(x).sum().backward()
    assert all(torch.allclose(p.grad, plain[n], rtol=1e-5, atol=1e-7) for n, p in model.named_parameters())


def test_parameter_groups_and_weight_decay_exclusions_work_with_timms_optimizers() -> None:
    from timm.optim import create_optimizer_v2, param_groups_layer_decay

    model = create_model("efficientnet_b0")
    groups = param_groups_layer_decay(model, weight_decay=0.05, layer_decay=0.75)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    scales = sorted({g["lr_scale"] for g in groups})
    assert len(scales) == 1 + sum(len(stage) for stage in model.stages) + 1  # stem, each block, head
    assert model.no_weight_decay() == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05, layer_decay=0.75).param_groups


@pytest.mark.parametrize("fmt, suffix", [("torchscript", ".pt"), ("onnx", ".onnx"), ("pt2", ".pt2")])
def test_every_exported_file_says_what_its_input_is(fmt: str, suffix: str, digits_run: Path, tmp_path: Path) -> None:
    """The file alone says how to prepare its input (size, resize, normalisation) and what its
    outputs mean: nothing has to be read from dszoo's source."""
    from dszoo.deployment.export import export_model, read_export_metadata

    model = load_checkpoint(digits_run / "best.pt")
    export_model(model, fmt, tmp_path / f"m{suffix}", (1, 16, 16))
    about = read_export_metadata(tmp_path / f"m{suffix}")
    assert about == {"model": "mobilenet_v1_025", "precision": "fp32", "class_names": ["0", "1", "2", "3"],
                     "input": {"input_size": [1, 16, 16], "interpolation": model.pretrained_cfg["interpolation"], "crop_pct": 0.875,
                               "crop_mode": "center", "mean": list(model.pretrained_cfg["mean"]),
                               "std": list(model.pretrained_cfg["std"])}}
    from dszoo.audio.spot import load_spotter

    spotter = create_model("ds_cnn_s", pretrained=True)
    export_model(spotter, fmt, tmp_path / f"kws{suffix}", (1, 49, 10))
    about = read_export_metadata(tmp_path / f"kws{suffix}")
    assert about["input"] == {"mfcc": "narrowband", "sample_rate": 16000, "clip_samples": 16000, "input_size": [1, 49, 10]}
    assert about["class_names"] == load_spotter().classes


def test_ema_warms_up_so_a_short_finetune_is_not_stuck_at_its_start(tmp_path: Path) -> None:
    """timm's EMA warm-up: after 8 steps the averaged weights (what validation and checkpoints
    use) are near the trained ones. Without it (``--no-ema-warmup``) 0.998 ** 8 of them is still
    the start, and the run says so."""
    from conftest import run_in_process

    start = create_model("mobilenet_v1_025", input_size=16, in_chans=1, num_classes=10).state_dict()
    train(TrainConfig(**{**QUICK, "max_batches": 8}, ema=True, lr=0.05, out_dir=str(tmp_path / "warm")))
    saved = torch.load(tmp_path / "warm" / "last.pt", weights_only=True)
    ema = {k.removeprefix("module."): v for k, v in saved["ema"].items()}
    w = "stages.0.0.pw.conv.weight"
    assert (ema[w] - saved["model"][w]).norm() < 0.5 * (start[w] - saved["model"][w]).norm()
    # every later use takes the averaged weights: the checkpoint rebuilt, and its weights as pretrained=
    # (what dszoo-train --pretrained loads)
    last = tmp_path / "warm" / "last.pt"
    for model in (load_checkpoint(last), create_model("mobilenet_v1_025", input_size=16, in_chans=1, num_classes=10,
                                                      pretrained=last)):
        assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items()) and not torch.equal(ema[w], saved["model"][w])
    res = run_in_process("train", ["--img-size", "16", "--epochs", "1", "--max-batches", "4", "--warmup-epochs", "0",
                                   "--ema", "--no-ema-warmup", "--out-dir", str(tmp_path / "cold")])
    assert res.returncode == 0, res.stderr
    assert ("note: after 4 steps the EMA (--ema-decay 0.998, --no-ema-warmup) is still 99% the starting weights, "
            "and validation measures it; drop --no-ema-warmup, lower --ema-decay or train longer") in res.stdout


def test_precise_bn_sets_the_statistics_the_weights_produce(tmp_path: Path) -> None:
    """``--precise-bn``: the first BatchNorm's running mean is the mean over the training
    batches of what the stem conv now computes (it trails the weights without it)."""
    from dszoo.training.data import build_datasets

    whole_set = {**QUICK, "max_batches": None, "batch_size": 2048}  # one step, one batch: every training digit
    for precise in (True, False):
        train(TrainConfig(**whole_set, precise_bn=precise, out_dir=str(tmp_path / str(precise))))
        model = load_checkpoint(tmp_path / str(precise) / "last.pt")
        data = build_datasets("digits", model.pretrained_cfg)
        x = torch.stack([data.train[i][0] for i in range(len(data.train))])
        with torch.no_grad():
            means = model.stem[0].conv(x).mean(dim=(0, 2, 3))
        assert torch.allclose(model.stem[0].norm.running_mean, means, rtol=1e-4, atol=1e-6) == precise


@pytest.mark.parametrize("preset, scale, hflip, crop, flips", [
    ("none", None, None, None, False), ("light", None, None, (0.5, 1.0), True), ("imagenet", None, None, (0.08, 1.0), True),
    ("light", (0.9, 1.0), 0.0, (0.9, 1.0), False)])
def test_image_augmentation_options(preset: str, scale, hflip, crop, flips: bool) -> None:
    from torchvision import transforms as T

    from dszoo.training.data import ImageAugment, _transforms

    cfg = create_model("mobilenet_v1_025", input_size=32).pretrained_cfg
    steps = _transforms(cfg, 3, True, ImageAugment(preset, scale, hflip)).transforms
    crops = [t for t in steps if "RandomResizedCrop" in type(t).__name__]  # timm's, with its interpolation
    assert (tuple(crops[0].scale) if crops else None) == crop
    assert any(isinstance(t, T.RandomHorizontalFlip) and t.p > 0 for t in steps) == flips
    assert [type(t) for t in _transforms(cfg, 3, False, ImageAugment(preset, scale, hflip)).transforms] == \
        [type(t) for t in _transforms(cfg, 3, False).transforms]  # validation is never augmented


@pytest.mark.parametrize("argv, message", [
    (["--image-augment", "light"], "--image-augment is for image datasets (imagefolder, cifar10, fake), not digits"),
    (["--dataset", "fake", "--scale", "0.6", "0.5"], "--scale 0.6 0.5: allowed: 0 < MIN <= MAX <= 1"),
    (["--dataset", "fake", "--image-augment", "none", "--hflip", "0.5"],
     "--image-augment none crops and flips nothing; it does not take --scale or --hflip"),
])
def test_image_augmentation_options_are_checked(argv: list[str], message: str) -> None:
    from conftest import run_in_process

    res = run_in_process("train", argv)
    assert res.returncode == 2 and res.stderr == f"error: {message}\n"


def test_the_old_name_of_read_checkpoint_still_reads_and_says_the_new_one(digits_run: Path) -> None:
    import dszoo.training

    with pytest.warns(DeprecationWarning, match="now read_checkpoint; dszoo.load_checkpoint gives the model"):
        old = dszoo.training.load_checkpoint(str(digits_run / "last.pt"))
    assert old["epoch"] == 1 and old.keys() == dszoo.training.read_checkpoint(str(digits_run / "last.pt")).keys()

