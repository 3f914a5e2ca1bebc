"""Structural reparameterisation: ``dszoo.reparameterize`` folds every multi-branch block into one
conv (MobileOne, Vasu et al. 2023), keeps the outputs, deploys timm's weights, and every path that
deploys (checkpoints, summaries, int8, export) sees the inference form."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from conftest import registry, run_in_process
from dszoo import (CheckpointError, count_macs, count_params, create_model, export_to_timm, get_model_config,
                   plan_model, reparameterize, save_state_dict, summarize)
from dszoo.blocks import GhostBottleneck, MobileOneBlock, NormLinearClassifier, RepConv, RepViTBlock, SqueezeExcite
from dszoo.deployment.export import randomise_batchnorm_statistics
from dszoo.deployment.optimize import relative_difference
from dszoo.reparameterize import is_reparameterizable
from dszoo.weights import from_timm_state_dict

REPARAMETERIZABLE = [name for name in registry() if any(spec.type in ("rep", "repvit") or getattr(spec, "rep_branches", 0)
                                                         for spec in get_model_config(name).stages)]


def test_the_reparameterizable_models_are_mobileones_repvits_and_ghostnetv3s() -> None:
    assert REPARAMETERIZABLE == ["ghostnetv3_050", "ghostnetv3_100", "ghostnetv3_130", "ghostnetv3_160", "mobileone_s0",
                                 "mobileone_s1", "mobileone_s2", "mobileone_s3", "mobileone_s4",
                                 "repvit_m0_9", "repvit_m1", "repvit_m1_0", "repvit_m1_1", "repvit_m1_5", "repvit_m2",
                                 "repvit_m2_3", "repvit_m3"]


@pytest.mark.parametrize("make", [
    lambda: RepConv(6, 6, 3, branches=3),
    lambda: RepConv(6, 10, 3, stride=2, branches=2),
    lambda: RepConv(6, 6, (3, 5), groups=6, branches=4),
    lambda: RepConv(6, 6, 1, branches=2),
    lambda: RepConv(6, 6, 3, scale_branch=False, norm=None),
    lambda: MobileOneBlock(6, 12, 5, stride=(2, 1), branches=3),
    lambda: RepConv(6, 6, 3, groups=6, branches=3, identity_after_scale=True),
    lambda: RepConv(6, 6, 1, branches=3, identity=False),
])
def test_a_reparameterised_block_computes_the_sum_of_its_branches(make) -> None:
    """In float64 the one conv equals the branches to the last bits: the fold is exact, whatever
    the kernel, stride, groups, branches and norm (RepVGG, section 3.3)."""
    block = randomise_batchnorm_statistics(make()).double()
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        for conv in [m for m in block.modules() if isinstance(m, RepConv)]:
            conv.reparameterize()
        got = block(x)
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)] == []
    assert all(c.bias is not None for c in convs) and len(convs) == sum(isinstance(m, RepConv) for m in block.modules())
    assert relative_difference(got, expected) < 1e-12


@pytest.mark.parametrize("make", [
    lambda: GhostBottleneck(6, 16, 10, kernel_size=5, stride=2, attention=True, rep_branches=3),
    lambda: GhostBottleneck(6, 12, 6, rep_branches=2, depthwise=False),
])
def test_a_ghostnetv3_bottleneck_folds_each_of_its_reparameterisable_convs(make) -> None:
    """GhostNetV3's bottleneck: its ghost modules' 1x1 and cheap convs and its strided depthwise
    conv each fold into one conv (float64: to the last bits); its shortcut and DFC attention keep
    their conv + norm, as timm's reparameterize_model leaves them."""
    block = randomise_batchnorm_statistics(make()).double()
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        reparameterize(block, inplace=True)
        got = block(x)
    folded = [n for n, m in block.named_modules() if isinstance(m, RepConv)]
    assert all(block.get_submodule(n).reparameterized for n in folded)
    assert len(folded) == 4 + (block.stride != (1, 1))
    assert not [n for n, m in block.named_modules() if isinstance(m, nn.BatchNorm2d) and ".short." not in n
                and not n.startswith("shortcut")]
    assert relative_difference(got, expected) < 1e-12


def test_a_reparameterisable_conv_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match="identity_after_scale adds the identity before the k x k branches, so no "
                                         "stochastic depth can drop those alone: use drop_path=0, got 0.1"):
        RepConv(6, 6, 3, identity_after_scale=True, drop_path=0.1)
    with pytest.raises(ValueError, match="rep \\(RepGhost's added ghost features\\) and rep_branches"):
        GhostBottleneck(6, 12, 6, rep=True, rep_branches=3)


@pytest.mark.parametrize("name", REPARAMETERIZABLE)
def test_reparameterize_keeps_the_outputs_and_deploys_timms_weights(name: str) -> None:
    """Training form and reparameterised form give the same logits within 1e-5 at an odd input
    size; the inference form has the paper's deployed count (the closed form with
    ``reparameterized: true``), and its weights are those timm's ``reparameterize_model`` makes
    of the same weights, bit for bit."""
    from timm.utils.model import reparameterize_model

    twin = randomise_batchnorm_statistics(timm.create_model(get_model_config(name).timm_name))
    model = create_model(name).eval()
    model.load_state_dict(from_timm_state_dict(model, twin.state_dict()))
    deployed = reparameterize(model)
    assert not model.cfg.reparameterized and is_reparameterizable(model)  # a copy: the model keeps its branches
    assert deployed.cfg.reparameterized and not is_reparameterizable(deployed)
    x = torch.randn(2, 3, 45, 37)
    with torch.no_grad():
        assert torch.equal(model(x), twin(x))
        assert relative_difference(deployed(x), model(x)) <= 1e-5
    theirs = reparameterize_model(twin).state_dict()
    mine = export_to_timm(deployed)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
    plan = plan_model(deployed.cfg, (3, 45, 37))
    assert count_params(deployed) == plan.params == sum(v.numel() for k, v in theirs.items() if "running" not in k
                                                        and "num_batches" not in k) < count_params(model)
    assert count_macs(deployed, (3, 45, 37)) == plan.macs


def test_a_reparameterised_checkpoint_loads_back_into_the_model_as_registered(tmp_path: Path) -> None:
    """A file of the inference form reparameterises the model it is loaded into (and says so); a
    file of the training form cannot go into a reparameterised model, and says why."""
    model = randomise_batchnorm_statistics(create_model("mobileone_s0", num_classes=5))
    deployed = reparameterize(model)
    save_state_dict(deployed, tmp_path / "deployed.safetensors")
    with pytest.warns(UserWarning, match="the file holds the reparameterised \\(inference\\) form: the model is "
                                         "reparameterised to take it"):
        loaded = create_model("mobileone_s0", num_classes=5, pretrained=tmp_path / "deployed.safetensors").eval()
    assert loaded.cfg.reparameterized and count_params(loaded) == count_params(deployed)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), deployed(x))
    save_state_dict(model, tmp_path / "branched.safetensors")
    with pytest.raises(CheckpointError) as err:
        create_model("mobileone_s0", num_classes=5, reparameterized=True, pretrained=tmp_path / "branched.safetensors")
    assert str(err.value) == (f"{tmp_path / 'branched.safetensors'}: holds the multi-branch training form, and "
                              "mobileone_s0 is reparameterised (one conv per block); load it into the model as "
                              "built, then call dszoo.reparameterize")


def test_the_summary_shows_both_counts() -> None:
    """``summarize`` gives the training form's params and MACs and the deployed form's (MobileOne-S0:
    Table 7's 2.1M params, 275M MACs); int8 bytes are those of the form int8 stores, the deployed one."""
    s = summarize("mobileone_s0")
    deployed = reparameterize(create_model("mobileone_s0"))
    assert (s.params, s.deployed_params, s.deployed_macs) == (5_293_272, 2_078_504, 275_110_400)
    assert s.deployed_params == count_params(deployed) and s.deployed_macs == count_macs(deployed, (3, 224, 224))
    assert s.size_bytes["int8"] == summarize(deployed).size_bytes["int8"] < s.size_bytes["fp32"] / 4
    assert summarize("mobilenet_v2_035", input_size=(3, 64, 64)).deployed_params is None
    res = run_in_process("summarize", ["--model", "mobileone_s0", "--input-size", "3", "64", "64"])
    assert res.returncode == 0, res.stderr
    assert re.search(r"^params, reparameterised \(deployed\) +2,078,504$", res.stdout, flags=re.M), res.stdout


def test_int8_quantizes_the_reparameterised_form() -> None:
    """The int8 graph has one conv per reparameterisable conv, each with int8 weights: no branch
    survives to be quantized on its own."""
    from dszoo.deployment.quantize import int8_graph

    model = randomise_batchnorm_statistics(create_model("mobileone_s1", num_classes=4))
    graph = int8_graph(model, [torch.randn(4, 3, 32, 32) for _ in range(2)])
    convs = [n for n in graph.graph.nodes if n.op == "call_function" and "conv2d" in str(n.target)]
    assert len(convs) == sum(isinstance(m, RepConv) for m in model.modules()) == 43
    assert all("dequantize" in str(n.args[1].target) for n in convs)


def test_training_refuses_the_reparameterised_form(tmp_path: Path) -> None:
    """Training runs the branched form: a deployed file is refused before any step, in one line."""
    save_state_dict(reparameterize(create_model("mobileone_s0", num_classes=10)), tmp_path / "d.safetensors")
    res = run_in_process("train", ["--model", "mobileone_s0", "--pretrained", str(tmp_path / "d.safetensors"),
                                   "--out-dir", str(tmp_path / "run"), "--epochs", "1", "-q"])
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'd.safetensors'}: holds the reparameterised (inference) form of mobileone_s0, one conv "
        "per block; training runs its multi-branch form: start from the weights before dszoo.reparameterize "
        "(--eval-only evaluates this one)")
    assert not (tmp_path / "run" / "best.pt").exists()


def test_a_strided_scale_branch_trains_channels_last() -> None:
    """The 1x1 scale branch of a strided RepConv subsamples, then convolves at stride 1: the same
    numbers as a strided 1x1 conv, and a channels-last training step of MobileOne's stem (3 input
    channels) runs; with a strided 1x1 conv, PyTorch 2.14's oneDNN weight gradient corrupted the
    heap there (the dszoo-train default on a CPU, and the benchmark's ours-cl-train row, aborted)."""
    stem = randomise_batchnorm_statistics(RepConv(3, 48, 3, stride=2))
    x = torch.randn(16, 3, 112, 112)
    strided = nn.Conv2d(3, 48, 1, stride=2, bias=False)
    strided.weight.data.copy_(stem.conv_scale.conv.weight)
    with torch.no_grad():
        assert stem.conv_scale.conv.stride == (1, 1)
        assert torch.equal(stem.conv_scale.conv(x[:, :, ::2, ::2]), strided(x))
    stem = stem.train().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(stem.parameters(), lr=0.1, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        stem(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
        optimizer.step()
    assert all(torch.isfinite(p).all() for p in stem.parameters())


@pytest.mark.parametrize("make", [
    lambda: RepViTBlock(6, 6, 3, se=lambda c, act: SqueezeExcite(c, 8)),
    lambda: RepViTBlock(6, 6, 5, norm_after_sum=False),
    lambda: RepViTBlock(6, 10, 3, stride=2, mlp_ratio=3.0),
    lambda: RepViTBlock(6, 10, 3, stride=(2, 1), norm_after_sum=False),
])
def test_a_repvit_block_deploys_as_convs_with_biases(make) -> None:
    """RepViT's token mixer (depthwise k x k + norm, depthwise 1x1, identity, [norm]) becomes one
    depthwise conv and every conv + norm one conv, in float64 to the last bits, in both mixer-norm
    forms and in the downsampling block; no norm is left."""
    block = randomise_batchnorm_statistics(make()).double().eval()
    x = torch.randn(2, 6, 11, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = block(x)
        block.reparameterize()
        got = block(x)
    assert not [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.bias is not None for m in block.modules() if isinstance(m, nn.Conv2d))
    assert relative_difference(got, expected) < 1e-12


@pytest.mark.parametrize("distilled", [False, True])
def test_a_norm_linear_classifier_deploys_as_one_linear(distilled: bool) -> None:
    """BatchNorm + Linear (and its distillation twin, averaged) fold into one Linear, exactly in
    float64; the deployed module holds that Linear's two tensors only."""
    head = NormLinearClassifier(12, 5, distilled=distilled).double().eval()
    for norm in (head.norm, head.norm_dist):
        if isinstance(norm, nn.BatchNorm1d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.data.uniform_(0.5, 2)
    x = torch.randn(7, 12, dtype=torch.float64)
    with torch.no_grad():
        expected = head(x)
        head.reparameterize()
        assert relative_difference(head(x), expected) < 1e-12
    assert list(head.state_dict()) == ["linear.weight", "linear.bias"]


@pytest.mark.parametrize("name", ["mobileone_s0", "repvit_m0_9"])
def test_branches_a_layernorm_follows_are_refused_not_folded_wrong(name: str) -> None:
    """Only a BatchNorm folds into a conv: a model built with LayerNorm is refused by
    ``reparameterize`` with the reason, before anything changes (it used to fold the LayerNorm as
    the identity: logits off by thousands), and its summary has no deployed count."""
    model = create_model(name, norm={"type": "layernorm"}, num_classes=3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"^cannot reparameterise a branch normalised by LayerNorm2d: only BatchNorm "
                                         r"\(or no norm\) folds into a conv"):
        reparameterize(model, inplace=True)
    assert model.state_dict().keys() == before.keys() and all(torch.equal(before[k], v)
                                                               for k, v in model.state_dict().items())
    assert is_reparameterizable(model) and summarize(model, input_size=(3, 64, 64)).deployed_params is None
