"""timm weights both ways, safe checkpoint loading, features, export, scripting, compile, hub."""
from __future__ import annotations

import csv
import os
import pickle
import re
import subprocess
import warnings
import sys
from pathlib import Path
from typing import Any

import pytest
import timm
from timm.models import FeatureInfo
import torch
from torch import nn

from conftest import NOT_INSTALLED, create_shallow, mechanism_cover, run_in_process, small_input_size, structural_variants
from dszoo import (CheckpointError, count_macs, count_params, create_model, export_to_timm, get_model_config, list_models,
                   load_pretrained, plan_model, save_state_dict)
from dszoo.weights import from_timm_state_dict
from dszoo.deployment.export import (EXPORT_FORMATS, ExportError, export_model, has_initial_batchnorm_statistics,
                                      randomise_batchnorm_statistics)

REPO = Path(__file__).resolve().parents[1]
PAIRS = [("mobilenet_v1", "mobilenetv1_100", 160), ("xception", "legacy_xception", 224)]


def random_timm(arch: str, **kwargs) -> nn.Module:
    """A timm model with random weights and random BatchNorm statistics, in eval mode."""
    return randomise_batchnorm_statistics(timm.create_model(arch, **kwargs))


def test_every_other_model_maps_every_timm_tensor() -> None:
    """The models with a timm twin that the bit-identical test below does not load (other widths and
    depths of its networks, and the largest): ours, exported to timm's names, has the tensor names
    and shapes of timm's twin (the digest tests/fixtures/make_timm_counts.py recorded, which
    test_models checks against the installed timm, a twin a family), and every one maps back to
    ours, on the meta device."""
    from fixtures.make_timm_counts import read_timm_counts, state_dict_digest

    recorded = read_timm_counts()
    others = sorted(set(TIMM_NAMES) - set(structural_variants()))
    assert len(others) == 69
    with torch.device("meta"):
        for ours in others:
            model = create_model(ours)
            theirs = export_to_timm(model)
            assert state_dict_digest(theirs) == recorded[ours]["state_dict"], f"{ours}: not {TIMM_NAMES[ours]}'s tensors"
            mine = {k: v.shape for k, v in model.state_dict().items()}
            assert {k: v.shape for k, v in from_timm_state_dict(model, theirs).items()} == mine, ours


@pytest.mark.parametrize("ours,arch,other_size", PAIRS)
@pytest.mark.parametrize("fmt", [".pth", ".pth.tar", ".safetensors"])
def test_timm_weights_give_identical_logits(tmp_path: Path, ours: str, arch: str, other_size: int, fmt: str) -> None:
    theirs = random_timm(arch)
    path = tmp_path / f"{arch}{fmt}"
    if fmt == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(path))
    elif fmt == ".pth.tar":
        torch.save({"epoch": 3, "arch": arch, "state_dict": theirs.state_dict()}, path)
    else:
        torch.save(theirs.state_dict(), path)
    model = create_model(ours, pretrained=path).eval()
    size = model.cfg.input_size[1]
    with torch.no_grad():
        for s in (size, other_size):
            x = torch.randn(2, 3, s, s)
            assert (model(x) - theirs(x)).abs().max().item() <= 1e-5


TIMM_NAMES = {name: get_model_config(name).timm_name for name in list_models() if get_model_config(name).timm_name}


@pytest.mark.parametrize("ours", sorted(set(TIMM_NAMES) & set(structural_variants())))
def test_every_timm_counterpart_loads_bit_identically_and_back(tmp_path: Path, ours: str) -> None:
    """On each distinct network (``structural_variants``: a width variant maps the same modules,
    which the meta-device test above checks for every model): timm's weights (random, with random
    BatchNorm statistics) give identical logits, max difference 0, and export_to_timm gives timm's
    state dict back tensor for tensor."""
    from safetensors.torch import save_file

    theirs = random_timm(TIMM_NAMES[ours])  # each file format is read in test_timm_weights_give_identical_logits
    save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    model = create_model(ours, pretrained=tmp_path / "timm.safetensors").eval()
    x = torch.randn(2, 3, *small_input_size(model.cfg)[1:])
    with torch.no_grad():
        assert torch.equal(model(x), theirs(x))
    back, want = export_to_timm(model), theirs.state_dict()
    assert list(back) == list(want) and all(torch.equal(back[k], want[k]) for k in want)


@pytest.mark.parametrize("ours,arch,other_size", PAIRS)
def test_export_to_timm_loads_strictly(ours: str, arch: str, other_size: int) -> None:
    model = randomise_batchnorm_statistics(create_model(ours))
    theirs = timm.create_model(arch).eval()
    theirs.load_state_dict(export_to_timm(model), strict=True)
    x = torch.randn(2, 3, other_size, other_size)
    with torch.no_grad():
        assert (model(x) - theirs(x)).abs().max().item() <= 1e-5


def test_new_num_classes_resets_head_and_reports(tmp_path: Path) -> None:
    path = tmp_path / "t.pth"
    theirs = random_timm("mobilenetv1_100")
    torch.save(theirs.state_dict(), path)
    with pytest.warns(UserWarning, match="classifier shape differs from num_classes=10; the head was freshly initialised"):
        model = create_model("mobilenet_v1", num_classes=10, pretrained=path)
    report = load_pretrained(create_model("mobilenet_v1", num_classes=10), path)
    assert report["head_reset"] and report["source"] == "timm mobilenetv1_100"
    torch.testing.assert_close(model.stages[4][1].pw.conv.weight, theirs.blocks[4][1].conv_pw.weight)


def test_mismatched_missing_and_foreign_keys_are_listed(tmp_path: Path) -> None:
    path = tmp_path / "ours.safetensors"
    save_state_dict(create_model("mobilenet_v1"), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: stem.0.conv.weight \(checkpoint \(32, 3, 3, 3\), model \(16, 3, 3, 3\)\)"):
        load_pretrained(create_model("mobilenet_v1_050"), path)
    partial = tmp_path / "partial.pt"
    state = create_model("mobilenet_v1").state_dict()
    del state["stages.0.0.dw.conv.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, partial)
    with pytest.raises(CheckpointError, match="missing keys: stages.0.0.dw.conv.weight; unexpected keys: extra.weight"):
        load_pretrained(create_model("mobilenet_v1"), partial)
    report = load_pretrained(create_model("mobilenet_v1"), partial, strict=False)
    assert report["missing"] == ["stages.0.0.dw.conv.weight"] and report["unexpected"] == ["extra.weight"]
    xc = tmp_path / "x.pth"
    torch.save(timm.create_model("legacy_xception").state_dict(), xc)
    with pytest.raises(CheckpointError, match="holds timm legacy_xception weights, which do not fit mobilenet_v1"):
        load_pretrained(create_model("mobilenet_v1"), xc)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_pickles_and_corrupt_files_are_refused(tmp_path: Path, capsys) -> None:
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as fh:
        pickle.dump({"model": Payload()}, fh)
    with pytest.raises(CheckpointError, match="refused: the file needs arbitrary pickled objects"):
        load_pretrained(create_model("ds_cnn_s"), evil)
    assert "this must never run" not in capsys.readouterr().out
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt.pth"):
        load_pretrained(create_model("ds_cnn_s"), corrupt)
    with pytest.raises(CheckpointError, match="checkpoint file not found"):
        load_pretrained(create_model("ds_cnn_s"), tmp_path / "nope.pth")


def test_convert_weights_script(tmp_path: Path) -> None:
    src, dst = tmp_path / "xception.pth", tmp_path / "xception.safetensors"
    theirs = random_timm("legacy_xception")
    torch.save(theirs.state_dict(), src)
    res = run_in_process("convert_weights", [str(src), str(dst), "--model", "xception"])
    assert res.returncode == 0, res.stderr
    model = create_model("xception", pretrained=dst).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        assert (model(x) - theirs(x)).abs().max().item() <= 1e-5
    again = run_in_process("convert_weights", [str(src), str(dst), "--model", "xception"])
    assert again.returncode == 2 and again.stderr.strip().endswith("exists; pass --overwrite to replace it")
    wrong = run_in_process("convert_weights", [str(src), str(tmp_path / "m.safetensors"), "--model", "mobilenet_v1"])
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr and wrong.stderr.count("\n") == 1


@pytest.mark.parametrize("ours,arch", [("mobilenet_v1", "mobilenetv1_100"), ("xception", "legacy_xception")])
def test_features_only_matches_timm(ours: str, arch: str) -> None:
    feats = create_model(ours, features_only=True)
    theirs = timm.create_model(arch, features_only=True)
    assert isinstance(feats.feature_info, FeatureInfo)  # timm's class, with its accessors
    assert feats.feature_info.channels() == theirs.feature_info.channels()
    assert feats.feature_info.reduction() == theirs.feature_info.reduction()
    assert len(feats.feature_info.module_name()) == len(theirs.feature_info.module_name())
    x = torch.randn(1, 3, 128, 128)
    maps = feats(x)
    assert [m.shape[1] for m in maps] == theirs.feature_info.channels()
    sub = create_model(ours, features_only=True, out_indices=(1, -1))
    sub_maps = sub(x)
    assert sub.feature_info.channels() == [m.shape[1] for m in sub_maps] == [128, theirs.feature_info.channels()[-1]]
    assert sub.feature_info.reduction() == [128 // m.shape[-1] for m in sub_maps]
    assert sub.feature_info.module_name() == [feats.feature_info.module_name()[1], feats.feature_info.module_name()[-1]]


def test_invalid_out_indices() -> None:
    with pytest.raises(ValueError, match=r"out_indices \(5,\) invalid for mobilenet_v1: it has 5 feature levels, use indices 0..4"):
        create_model("mobilenet_v1", features_only=True, out_indices=(5,))
    with pytest.raises(ValueError, match="out_indices needs features_only=True"):
        create_model("mobilenet_v1", out_indices=(1,))


@pytest.mark.parametrize("name", mechanism_cover())
def test_torchscript_scripting(name: str) -> None:
    model = create_shallow(name).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(2, *small_input_size(model.cfg))
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model(x))
    with pytest.raises(Exception, match="input channels"):
        scripted(torch.randn(1, model.cfg.in_chans + 1, *x.shape[2:]))


@pytest.mark.parametrize("name", mechanism_cover())
def test_torch_compile_full_graph(name: str) -> None:
    """Dynamo captures every model as one graph (no graph breaks); inductor codegen is tested in
    test_inference.py."""
    torch._dynamo.reset()
    model = create_shallow(name).eval()
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    x = torch.randn(2, *small_input_size(model.cfg))
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("fmt,suffix", [("torchscript", ".pt"), ("pt2", ".pt2"), ("onnx", ".onnx")])
def test_export_script_writes_verified_files(tmp_path: Path, fmt: str, suffix: str) -> None:
    ckpt = tmp_path / "w.safetensors"
    save_state_dict(create_model("ds_cnn_s"), ckpt)
    out = tmp_path / f"m{suffix}"
    res = run_in_process("export", ["--model", "ds_cnn_s", "--pretrained", str(ckpt), "--format", fmt, "--out", str(out)])
    assert res.returncode == 0, res.stderr
    assert out.stat().st_size > 10_000 and "dynamic batch" in res.stdout
    # a freshly built model's BatchNorm is the identity: it is also checked with randomised statistics
    found = re.search(r"fresh batch (\S+); (\S+) on a copy with randomised BatchNorm statistics", res.stdout)
    assert found and float(found[1]) <= 1e-4 and float(found[2].rstrip(";")) <= 1e-4, res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["w.safetensors", out.name])
    if fmt == "torchscript":  # BatchNorm is folded into the convs of the exported graph
        loaded = torch.jit.load(str(out))
        assert not any(m.original_name == "BatchNorm2d" for m in loaded.modules())
        assert sum(m.original_name in ("Conv2d", "Conv2dSame") for m in loaded.modules()) == 9


def _broken_torchscript(break_model):
    """The TorchScript runtime, but first breaking the model it is given to write."""

    class Broken(type(EXPORT_FORMATS["torchscript"])):
        def write(self, model: nn.Module, *args, **kwargs):
            break_model(model)
            return super().write(model, *args, **kwargs)

    return Broken()


def _zero_conv_biases(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d) and m.bias is not None:
                m.bias.zero_()


def test_export_check_catches_a_broken_export_a_fresh_model_hides(tmp_path: Path, monkeypatch) -> None:
    """Dropping the folded BatchNorm shifts changes nothing on a fresh model (its BatchNorm is
    the identity); the check on a copy with randomised statistics catches it."""
    monkeypatch.setitem(EXPORT_FORMATS, "torchscript", _broken_torchscript(_zero_conv_biases))
    out = tmp_path / "m.pt"
    fresh = create_model("ds_cnn_s")
    assert has_initial_batchnorm_statistics(fresh)
    with pytest.raises(ExportError, match=r"on a copy with randomised BatchNorm statistics") as err:
        export_model(fresh, "torchscript", out, (1, 49, 10))
    own, randomised = re.search(r"fresh batch (\S+); (\S+) on a copy", str(err.value)).groups()
    assert float(own) <= 1e-4 < 0.01 < float(randomised)  # the model alone would have passed
    assert not out.exists()
    trained = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    assert not has_initial_batchnorm_statistics(trained)
    with pytest.raises(ExportError, match=r"differs from the model: max relative difference vs the model on a fresh "
                                          r"batch \S+ \(allowed 0.0001\)$"):
        export_model(trained, "torchscript", out, (1, 49, 10))


def test_export_check_is_relative_to_the_outputs(tmp_path: Path, monkeypatch) -> None:
    """A fresh mobilenet's logits are below 1e-13: an export that outputs zeros is 100% off."""
    monkeypatch.setitem(EXPORT_FORMATS, "torchscript", _broken_torchscript(lambda m: m.get_classifier().weight.data.zero_()))
    with pytest.raises(ExportError, match=r"fresh batch 1\.00e\+00"):
        export_model(create_model("mobilenet_v1_025", input_size=32), "torchscript", tmp_path / "m.pt", (3, 32, 32))


@pytest.mark.parametrize("name", structural_variants())  # interface, not widths
def test_torch_hub_local(name: str) -> None:
    model = torch.hub.load(str(REPO), name, source="local", num_classes=10, trust_repo=True)
    assert model.cfg.name == name and model.get_classifier().out_features == 10


def test_torch_hub_loads_a_checkout_that_is_not_installed() -> None:
    code = (NOT_INSTALLED + f"import torch; m = torch.hub.load({str(REPO)!r}, 'ds_cnn_s', source='local', "
            "num_classes=5, trust_repo=True); import dszoo; print(m.num_classes, dszoo.__file__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["5", str(REPO / "models" / "__init__.py")]


@pytest.mark.parametrize("ours,arch", [("mobilenet_v1", "mobilenetv1_100"), ("xception", "legacy_xception")])
def test_timm_transforms_match_the_timm_weights(ours: str, arch: str) -> None:
    from timm.data import create_transform, resolve_data_config

    cfg = resolve_data_config({}, model=create_model(ours))
    expected = resolve_data_config({}, model=timm.create_model(arch))
    assert {k: cfg[k] for k in expected} == expected
    assert str(create_transform(**cfg)) == str(create_transform(**expected))


def test_pretrained_true_loads_timms_weights_from_the_local_caches(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrained=True reads the file timm's pretrained=True would: the Hugging Face hub's cache
    (mobilenetv1_100), torch.hub's checkpoints/ (legacy_xception); without one, one line."""
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name, says in (("mobilenet_v1", "timm's mobilenetv1_100 weights are not on this machine (looked in "),
                       ("xception", "timm's legacy_xception weights are not on this machine (looked in "),
                       ("mobilenet_v1_025", "timm publishes no weights for this network; pass pretrained='FILE'")):
        with pytest.raises(CheckpointError, match=re.escape(f"{name}: pretrained=True: {says}")) as err:
            create_model(name, pretrained=True)
        assert "\n" not in str(err.value) and "pretrained='FILE'" in str(err.value)
    from safetensors.torch import save_file

    mnv1 = timm.create_model("mobilenetv1_100").eval()
    snapshot = tmp_path / "hf" / "models--timm--mobilenetv1_100.ra4_e3600_r224_in1k"
    (snapshot / "refs").mkdir(parents=True)
    (snapshot / "refs" / "main").write_text("abc123")
    (snapshot / "snapshots" / "abc123").mkdir(parents=True)
    save_file(mnv1.state_dict(), str(snapshot / "snapshots" / "abc123" / "model.safetensors"))
    xcp = timm.create_model("legacy_xception").eval()
    (tmp_path / "torch" / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(xcp.state_dict(), tmp_path / "torch" / "hub" / "checkpoints" / "xception-43020ad28.pth")
    for name, theirs, size in (("mobilenet_v1", mnv1, 64), ("xception", xcp, 71)):
        ours = create_model(name, pretrained=True).eval()
        x = torch.randn(1, 3, size, size)
        with torch.no_grad():
            assert torch.equal(ours(x), theirs(x))


TORCHVISION_PAIRS = [(name, get_model_config(name).torchvision_name) for name in list_models()
                     if get_model_config(name).torchvision_name]
TORCHVISION_PARAMS = {"shufflenet_v2_x0_5": 1_366_792, "shufflenet_v2_x1_0": 2_278_604,
                      "shufflenet_v2_x1_5": 3_503_624, "shufflenet_v2_x2_0": 7_393_996}
"""torchvision 0.29's published counts (``weights.meta["num_params"]``) of models timm does not have."""


def test_params_and_macs_equal_the_torchvision_twins_by_the_same_counter() -> None:
    """Each model with a torchvision twin has its parameters and, counted by ``count_macs``, its
    MACs (ours from the closed form); where timm has no twin, the count torchvision publishes."""
    import torchvision

    with torch.device("meta"):
        for ours, theirs in TORCHVISION_PAIRS:
            cfg = get_model_config(ours)
            twin = getattr(torchvision.models, theirs)()
            plan = plan_model(cfg)
            assert (plan.params, plan.macs) == (count_params(twin), count_macs(twin, cfg.input_size)), ours
    assert {name: plan_model(get_model_config(name)).params for name in TORCHVISION_PARAMS} == TORCHVISION_PARAMS
    assert len(TORCHVISION_PAIRS) == 13


@pytest.mark.parametrize("ours", ["mobilenet_v3_small", "shufflenet_v2_x0_5", "mnasnet_b1_050"])
def test_export_to_torchvision_gives_torchvisions_state_dict_back(ours: str) -> None:
    """torchvision's weights into ours and back: every tensor in its place (MobileNetV3's head
    conv back to a Linear)."""
    import torchvision

    from dszoo.weights import export_to_torchvision, from_torchvision_state_dict

    theirs = randomise_batchnorm_statistics(getattr(torchvision.models, get_model_config(ours).torchvision_name)())
    model = create_model(ours)
    model.load_state_dict(from_torchvision_state_dict(model, theirs.state_dict(), "torchvision"))
    back, want = export_to_torchvision(model), theirs.state_dict()
    assert list(back) == list(want) and all(torch.equal(back[k], want[k]) for k in want)


@pytest.mark.parametrize("ours,theirs", TORCHVISION_PAIRS)
def test_torchvision_weights_load_through_create_model(tmp_path: Path, ours: str, theirs: str) -> None:
    """torchvision's state dicts (random weights, random BatchNorm statistics) give torchvision's
    logits, identical; for MobileNetV3 its BatchNorm eps of 1e-3 is set, and said, and its head
    conv is applied as torchvision's Linear (``head.conv.op``)."""
    import torchvision

    reference = randomise_batchnorm_statistics(getattr(torchvision.models, theirs)())
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = create_model(ours, pretrained=tmp_path / "tv.pth").eval()
    notes = [str(w.message) for w in caught if "torchvision" in str(w.message)]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got, want = model(x), reference(x)
    eps_note = [f"{tmp_path / 'tv.pth'}: BatchNorm eps set to 0.001 (was 1e-05): torchvision trained these weights with it"]
    if ours.startswith("mobilenet_v3"):
        assert notes == eps_note and model.cfg.norm.eps == 1e-3 and model.cfg.head.conv.op == "linear"
    elif ours.startswith("efficientnet_v2"):
        assert notes == eps_note and model.cfg.norm.eps == 1e-3
    else:
        assert notes == []
    assert torch.equal(got, want)
    from dszoo.builder import build_model

    rebuilt = build_model(model.cfg).eval()  # what a checkpoint of it rebuilds: its config says op linear
    rebuilt.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt(x), want)
    ten = create_model(ours, pretrained=tmp_path / "tv.pth", num_classes=10)
    assert ten.num_classes == 10
    other = "mobilenet_v2_050" if ours == "mobilenet_v2" else "ds_cnn_s"
    with pytest.raises(CheckpointError) as err:
        create_model(other, pretrained=tmp_path / "tv.pth")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{tmp_path / 'tv.pth'}")


@pytest.mark.parametrize("fmt, module, extra", [("onnx", "onnxruntime", "onnx"), ("pte", "executorch.exir", "executorch"),
                                                 ("openvino", "nncf", "openvino")])
def test_a_missing_runtime_names_its_extra(fmt: str, module: str, extra: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if the package were not installed
    runtime = EXPORT_FORMATS[fmt].runtime
    message = f"--format {fmt} needs {runtime} ({module}), not installed here: pip install 'dszoo[{extra}]'"
    out = tmp_path / f"kws{EXPORT_FORMATS[fmt].suffixes[0]}"
    with pytest.raises(ExportError, match=re.escape(message)):
        export_model(create_model("ds_cnn_s"), fmt, out, (1, 49, 10))
    res = run_in_process("export", ["--model", "ds_cnn_s", "--format", fmt, "--out", str(out)])
    assert res.returncode == 2 and res.stderr == f"error: {message}\n"
    assert list(tmp_path.iterdir()) == []

def test_published_top1_is_that_of_the_twins_default_weights() -> None:
    """configs/imagenet_top1.csv: each figure belongs to a registered model and comes from the
    weights its twin publishes: torchvision's metadata to the digit, or timm's results for the
    twin's default pretrained tag in the installed timm; a model without published weights has none."""
    import torchvision
    from timm.models import get_pretrained_cfg

    from dszoo import UnknownModelError, imagenet_top1
    from dszoo.registry import published_top1_table

    table = published_top1_table()
    assert len(table) == 114 and set(table) <= set(list_models())
    for name, (top1, source) in table.items():
        cfg = get_model_config(name)
        assert imagenet_top1(name) == top1 and 50 < top1 < 90, name
        if source.startswith("torchvision "):
            weights = torchvision.models.get_model_weights(cfg.torchvision_name).DEFAULT
            assert source == f"torchvision {weights}"
            assert top1 == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"], name
        else:
            tag = get_pretrained_cfg(cfg.timm_name).tag
            assert re.fullmatch(rf"timm results-imagenet\.csv {re.escape(cfg.timm_name)}\.{tag} at \d+", source), name
    assert imagenet_top1("ds_cnn_s") is None and imagenet_top1("mobilenet_v1_025") is None
    assert imagenet_top1("mobilenetv4_conv_small") == imagenet_top1("mobilenet_v4_conv_small")  # timm's name too
    with pytest.raises(UnknownModelError, match="unknown model 'mobilenet_v9'"):
        imagenet_top1("mobilenet_v9")


def _top1_script() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_imagenet_top1", REPO / "scripts" / "make_imagenet_top1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_top1_table_is_made_from_timms_results_and_torchvisions_metadata(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """scripts/make_imagenet_top1.py: a timm row at the model's size wins, else at the weights'
    own size; torchvision's figure where timm has none; a table that is not timm's is one line."""
    script = _top1_script()
    results = tmp_path / "results-imagenet.csv"
    results.write_text("model,img_size,top1,top5\nmobilenetv4_conv_small.e2400_r224_in1k,256,74.644,92.0\n"
                       "mobilenetv4_conv_small.e2400_r224_in1k,224,73.756,91.4\n"
                       "efficientnet_b2.ra_in1k,256,79.324,94.6\n")
    monkeypatch.setattr(script, "OUT", tmp_path / "top1.csv")
    assert script.main(str(results)) == 0
    with open(tmp_path / "top1.csv", newline="") as f:
        rows = {row["model"]: (row["top1"], row["source"]) for row in csv.DictReader(f)}
    assert rows["mobilenet_v4_conv_small"] == ("73.756", "timm results-imagenet.csv "
                                               "mobilenetv4_conv_small.e2400_r224_in1k at 224")
    assert rows["efficientnet_b2"] == ("79.324", "timm results-imagenet.csv efficientnet_b2.ra_in1k at 256")  # ours: 260
    assert rows["shufflenet_v2_x0_5"][1] == "torchvision ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"
    assert "mobilenet_v2" in rows and "ds_cnn_s" not in rows  # torchvision's MobileNetV2; no weights for a spotter
    results.write_text("name,accuracy\nx,1\n")
    with pytest.raises(script.UsageError, match=r"not timm's results-imagenet\.csv \(columns model, img_size, top1\)"):
        script.read_results(str(results))
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(script.FileKindError, match="is a FIFO"):
        script.read_results(str(tmp_path / "fifo"))
