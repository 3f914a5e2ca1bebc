"""optimize_for_inference (same outputs, BN folded, fallbacks) and the benchmark script."""
from __future__ import annotations

import copy
import json
import logging
import platform
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dszoo.blocks import MobileMultiQueryAttention
import torch
from torch import nn

from conftest import command_module, create_shallow, mechanism_cover, small_input_size
from dszoo.deployment.export import randomise_batchnorm_statistics
from dszoo import count_macs, create_model, get_model_config
from dszoo.deployment import backends as inference
from dszoo.measurement.benchmark import LayerGemms, roofline_ms
from dszoo.measurement.profiler import describe_onednn_problem, onednn_primitives, top_operators
from dszoo.profile import layer_gemms, layer_traffic
from dszoo.deployment.optimize import fold_batchnorm, optimize_for_inference, relative_difference

REPO = Path(__file__).resolve().parents[1]
GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
X86 = platform.machine().lower() in ("x86_64", "amd64")  # where oneDNN Graph fuses
ONEDNN_GRAPH = pytest.param("onednn_graph", marks=pytest.mark.skipif(not X86, reason="oneDNN Graph fuses on x86"))


@pytest.mark.parametrize("name", mechanism_cover())
@pytest.mark.parametrize("separable", [True, False])
def test_fold_batchnorm_removes_every_bn_and_keeps_outputs(name: str, separable: bool) -> None:
    """The standard-conv forms in float64: what is checked is the folding's arithmetic, and some of
    them (GhostNetV2's, its cheap and attention convs dense) are so ill-conditioned under random
    statistics that float32 itself is 0.66 (relative) from their exact outputs."""
    dtype = torch.float32 if separable else torch.float64
    model = randomise_batchnorm_statistics(create_shallow(name, separable=separable)).to(dtype)
    x = torch.randn(2, *small_input_size(model.cfg), dtype=dtype)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        # all but the Mobile MQA block's norm, which has no conv before it to fold into
        assert [n for n, m in folded.named_modules() if isinstance(m, nn.BatchNorm2d)] == \
            [f"{n}.norm" for n, m in folded.named_modules() if isinstance(m, MobileMultiQueryAttention)]
        assert relative_difference(folded(x), expected) <= 1e-5


SCRIPTED = ("mobilenet_v4_hybrid_medium_075", "mobileone_s4", "shufflenet_v2_x0_5")
"""The plain scripted backend on the families whose forward is more than a chain of convs
(attention, reparameterised branches, slices and a channel shuffle); every family is scripted
in test_interop.py and traced through oneDNN Graph here."""


@pytest.mark.parametrize("name,backend", [pytest.param(name, "onednn_graph", marks=ONEDNN_GRAPH.marks)
                                          for name in mechanism_cover()] + [(name, "torchscript") for name in SCRIPTED])
def test_optimized_model_matches_on_fresh_inputs(name: str, backend: str) -> None:
    model = randomise_batchnorm_statistics(create_shallow(name))
    size = small_input_size(model.cfg)
    opt = optimize_for_inference(model, torch.randn(4, *size), backends=(backend,))
    assert opt.backend == backend and opt.compile_seconds > 0, opt.failures
    with torch.no_grad():
        for _ in range(2):
            x = torch.randn(4, *size)
            assert relative_difference(opt(x), model(x)) <= 1e-4


@pytest.mark.skipif(not X86, reason="oneDNN Graph fuses on x86")
def test_onednn_graph_fuses_and_leaves_the_process_wide_switch_off() -> None:
    model = randomise_batchnorm_statistics(create_model("mobilenet_v1_025"))
    x = torch.randn(2, 3, 64, 64)
    opt = optimize_for_inference(model, x, backends=("onednn_graph",), memory_format="channels_last")
    assert opt.backend == "onednn_graph" and opt.channels_last
    assert not torch.jit.onednn_fusion_enabled()  # on only inside our calls
    opt(x)
    # the graph that ran: its top level, then the bodies of the fusion groups oneDNN executes
    top, *groups = str(torch.jit.last_executed_optimized_graph()).split("with prim::oneDNNFusionGroup")
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert convs == 27 and groups and "aten::_convolution" not in top
    assert sum(g.count("aten::_convolution") for g in groups) == convs  # every conv, with its ReLU6, fused
    assert sum(g.count("aten::hardtanh") for g in groups) == convs
    assert not torch.jit.onednn_fusion_enabled()
    with inference.onednn_graph_fusion():
        assert torch.jit.onednn_fusion_enabled()
    assert not torch.jit.onednn_fusion_enabled()
    with torch.no_grad():  # another batch size leaves the fused groups' guards: still the right outputs
        y = torch.randn(3, 3, 64, 64)
        assert relative_difference(opt(y), model(y)) <= 1e-4


@pytest.mark.parametrize("memory_format", ["contiguous", "channels_last"])
def test_onednn_graph_runs_a_model_whose_last_maps_are_1x1(memory_format: str) -> None:
    """At 32x32 MobileNet's last depthwise conv sees a 1x1 map, where oneDNN Graph's fused
    1x1 + depthwise group cannot reorder; traced as its centre tap, it fuses, and inputs of
    another size run correctly too."""
    model = randomise_batchnorm_statistics(create_model("mobilenet_v1_025", input_size=32)).eval()
    x = torch.randn(2, 3, 32, 32)
    folded = fold_batchnorm(copy.deepcopy(model))
    special = inference.centre_tap_convs(folded, x)
    changed = [n for (n, a), (_, b) in zip(folded.named_modules(), special.named_modules()) if type(a) is nn.Conv2d
               and a.kernel_size != b.kernel_size]
    assert changed == ["stages.4.1.dw.conv"] and special.stages[4][1].dw.conv.kernel_size == (1, 1)
    assert inference.centre_tap_convs(folded, torch.randn(2, 3, 64, 64)) is None  # no 1x1 map there
    with torch.no_grad():
        assert relative_difference(special(x), folded(x)) < 1e-6
        fast = optimize_for_inference(model, x, backends=("onednn_graph",), memory_format=memory_format)
        assert fast.backend == "onednn_graph" and fast.failures == {}
        for other in (x, torch.randn(2, 3, 64, 64), torch.randn(1, 3, 48, 40)):
            assert relative_difference(fast(other), model(other)) <= 1e-4


def test_onednn_graph_that_fuses_nothing_gives_way_to_the_next_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.jit, "last_executed_optimized_graph", lambda: "graph(%x): no fusion groups")
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    opt = optimize_for_inference(model, torch.randn(2, 1, 49, 10), backends=("onednn_graph", "torchscript"))
    assert opt.backend == "torchscript"
    assert opt.failures == {"onednn_graph": "RuntimeError: oneDNN Graph fused nothing on this machine (it needs an x86 CPU)"}
    assert not torch.jit.onednn_fusion_enabled()


def test_inductor_path(caplog: pytest.LogCaptureFixture) -> None:
    """Inductor with freezing (the generated code reads the weights as frozen constants), set for
    this compilation only: the process-wide inductor config that the user's own torch.compile
    calls read is left as it was."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    freezing = inductor_config.freezing
    torch._logging.set_logs(output_code=True)
    try:
        with caplog.at_level(logging.DEBUG):
            opt = optimize_for_inference(model, torch.randn(8, 1, 49, 10), backends=("inductor",))
    finally:
        torch._logging.set_logs()
    assert opt.backend == "inductor", opt.failures
    assert "_frozen_param" in "\n".join(r.getMessage() for r in caplog.records)
    assert inductor_config.freezing is freezing is False
    x = torch.randn(8, 1, 49, 10)
    with torch.no_grad():
        assert relative_difference(opt(x), model(x)) <= 1e-4


def test_failing_compiler_falls_back_and_says_why_in_full(monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    from dszoo.deployment import optimize

    real = inference.build_backend
    long_reason = "could not create a primitive descriptor for the reorder primitive. " + "Run it again. " * 20

    def broken(backend, model, example, *args):
        if backend in ("onednn_graph", "inductor", "torchscript"):  # TorchScript's error texts are tracebacks
            raise RuntimeError(f"The following operation failed.\nTraceback:\n  frozen(x)\n{backend}: {long_reason}\n")
        return real(backend, model, example, *args)

    monkeypatch.setattr(optimize, "build_backend", broken)  # where optimize_for_inference looks it up
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    opt = optimize_for_inference(model, torch.randn(2, 1, 49, 10), verbose=True)
    assert opt.backend == "eager"
    reasons = {b: f"RuntimeError: {b}: {long_reason.strip()}" for b in ("onednn_graph", "inductor", "torchscript")}
    assert opt.failures == reasons
    assert capsys.readouterr().err.splitlines() == [f"optimize_for_inference: backend {b} not used: {why}"
                                                    for b, why in reasons.items()]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in opt.modules())


def test_the_benchmark_times_the_torchvision_twin_and_both_reparameterised_forms() -> None:
    """The benchmark's torchvision row runs torchvision's network with our weights (the same logits),
    and a reparameterisable model adds our inference form and timm's (reparameterize_model), both
    computing what the training form does; their rates are taken against the deployed MACs."""
    from dszoo import count_macs, reparameterize
    from dszoo.measurement import benchmark

    shuffle = randomise_batchnorm_statistics(create_model("shufflenet_v2_x0_5"))
    mobileone = randomise_batchnorm_statistics(create_model("mobileone_s0"))
    x = torch.randn(2, 3, 64, 64)
    forms = benchmark._reparameterized_twins(mobileone, benchmark._timm_twin(mobileone))
    with torch.no_grad():
        assert torch.equal(benchmark._torchvision_twin(shuffle)(x), shuffle(x))
        assert sorted(forms) == ["ours-reparameterized", "timm-reparameterized"]
        assert all(relative_difference(form(x), mobileone(x)) <= 1e-5 for form in forms.values())
    assert benchmark._reparameterized_twins(shuffle, None) == {} and benchmark._torchvision_twin(mobileone) is None
    assert count_macs(reparameterize(mobileone), (3, 224, 224)) == 275_110_400
    assert benchmark.TRAINING_FORM_VARIANTS == ("ours", "ours-cl", "timm", "torchvision")


def test_benchmark_quick(tmp_path: Path) -> None:
    out_json, out_png, out_md = tmp_path / "b.json", tmp_path / "b.png", tmp_path / "profile.md"
    res = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--quick", "--json", str(out_json),
                          "--plot", str(out_png), "--profile", str(out_md), "--profile-top", "4",
                          "--compare-backends", "torchscript"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    data = json.loads(out_json.read_text())
    assert data["gemm_gflops"] > 0
    variants = {(r["model"], r["variant"], r["batch"]) for r in data["rows"]}
    for model in ("ds_cnn_s", "mobilenet_v1_025"):
        assert {(model, v, b) for v in ("ours", "ours-cl", "optimized", "optimized-torchscript", "gemms")
                for b in (1, 2)} <= variants
        assert {(model, v, 4) for v in ("ours-train", "ours-cl-train")} <= variants
        assert (model, "standard", 1) in variants
    for r in data["rows"]:
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"]
        assert r["ceiling_fraction"] == pytest.approx(2 * r["gmacs_per_s"] / data["gemm_gflops"])
        assert r["ceiling_fraction"] <= 1  # a ceiling bounds what it is compared with
        if r["variant"] == "gemms":  # the model's ungrouped layers as bare matrix products
            model, size = create_model(r["model"]), get_model_config(r["model"]).input_size
            gemm_macs = sum(m * k * n for m, k, n in layer_gemms(model, size, r["batch"]).values())
            assert r["gmacs_per_s"] * r["median_ms"] / 1e3 == pytest.approx(gemm_macs / 1e9)
            bound = r["ceiling_fraction"] * count_macs(model, size) * r["batch"] / gemm_macs
            assert r["model_ceiling_bound"] == pytest.approx(bound)
            assert r["roofline_ms"] is None
            line = f"- {r['model']} at batch {r['batch']}: its layers' GEMMs alone take {r['median_ms']:.2f} ms, "
            assert line in res.stdout
            continue
        assert r["model_ceiling_bound"] is None
        if r["variant"].endswith("-train"):
            assert r["roofline_ms"] is None
            continue
        separable = r["variant"] != "standard"
        traffic = layer_traffic(create_model(r["model"], separable=separable), get_model_config(r["model"]).input_size,
                                r["batch"])
        assert r["roofline_ms"] == pytest.approx(roofline_ms(list(traffic.values()), data["gemm_gflops"],
                                                             data["memory_gbs"]))
        assert r["roofline_fraction"] == pytest.approx(r["roofline_ms"] / r["median_ms"])
    assert data["memory_gbs"] > 0
    assert "| ds_cnn_s | optimized | 1 |" in res.stdout
    notes = {r["variant"]: r["note"] for r in data["rows"] if r["model"] == "ds_cnn_s" and r["batch"] == 1}
    assert notes["optimized"].startswith("onednn_graph, ") and notes["optimized-torchscript"].startswith("torchscript, ")
    assert out_png.read_bytes()[:4] == b"\x89PNG"
    assert data["malloc_tuned"] is GLIBC
    # profiles: every inference variant at the largest batch, after its timing
    assert [(p["model"], p["variant"], p["batch"]) for p in data["profiles"]] == [
        (m, v, 2) for m in ("ds_cnn_s", "mobilenet_v1_025")
        for v in ("ours", "ours-cl", "optimized", "optimized-torchscript")]
    report = out_md.read_text()
    for p in data["profiles"]:
        shares = [op["share"] for op in p["operators"]]
        assert len(shares) == 4 and shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-9
        assert f"### {p['model']}, {p['variant']}, batch 2" in report
        if p["variant"] == "ours":  # eager time goes to the convolutions (at these tiny sizes a
            # BatchNorm row sometimes edges out the largest conv row: 1 run in 6 here)
            assert "aten::mkldnn_convolution" in [op["operator"] for op in p["operators"]]
        dnnl = p["onednn"]
        assert len(dnnl["top"]) == 4 and 0 < sum(op["share"] for op in dnnl["top"]) <= 1 + 1e-9
        assert sum(op["ms"] for op in dnnl["top"]) <= dnnl["total_ms"] * (1 + 1e-9)
        assert 0 < dnnl["total_ms"] < dnnl["wall_ms"]
        assert (f"oneDNN primitives: {dnnl['total_ms']:.2f} ms of a {dnnl['wall_ms']:.2f} ms call "
                f"({dnnl['total_ms'] / dnnl['wall_ms']:.0%}), in {dnnl['calls']:g} primitive calls") in report
        if (p["model"], p["variant"]) == ("mobilenet_v1_025", "optimized"):  # the README's fusion claim
            assert any("+ depthwise 3x3" in op["layer"] and "dw:k3s" in op["post_ops"] for op in dnnl["top"])

# Run in a fresh interpreter: the tuning is process-wide and cannot be undone.
MALLOC_PROBE = textwrap.dedent("""
    import resource, sys, threading, torch
    sys.path.insert(0, sys.argv[1])
    from dszoo import create_model, optimize_for_inference, tune_glibc_malloc

    def mib_faulted(fn):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) * resource.getpagesize() / 2**20

    def use_64_mib():
        torch.empty(16 * 2**20).fill_(1.0)

    def steady_state_mib_faulted():  # the heap settles after a few rounds
        for _ in range(3):
            use_64_mib()
        return round(mib_faulted(use_64_mib))

    print(steady_state_mib_faulted())
    model = create_model("ds_cnn_s")
    print(optimize_for_inference(model, torch.randn(2, 1, 49, 10), backends=("eager",), tune_malloc=False).malloc_tuned)
    print(optimize_for_inference(model, torch.randn(2, 1, 49, 10), backends=("eager",)).malloc_tuned)
    print(tune_glibc_malloc())
    print(steady_state_mib_faulted())
    big = []  # a block far above one thread arena's 64 MiB heap, from a non-main thread
    worker = threading.Thread(target=lambda: big.append(torch.full((75 * 2**20,), 2.0).sum().item()))
    worker.start()
    worker.join()
    print(big[0] == 2.0 * 75 * 2**20)
""")


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_malloc_reuses_freed_memory_instead_of_faulting_it_in_again() -> None:
    res = subprocess.run([sys.executable, "-c", MALLOC_PROBE, str(REPO)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    default_mib, untuned, tuned, again, tuned_mib, big_ok = res.stdout.split()
    assert int(default_mib) >= 64  # glibc maps a fresh 64 MiB and the kernel zero-fills it again
    assert (untuned, tuned, again) == ("False", "True", "True")
    assert int(tuned_mib) == 0  # the freed block is reused
    assert big_ok == "True"


def test_warm_up_lasts_until_calls_settle() -> None:
    """A first-call cost lasting several calls stays out of the timed ones; at most ``most``."""
    from dszoo.measurement.benchmark import settle, timed_interleaved

    def calls_made(costs: list[float], **limits: Any) -> int:
        it, made = iter(costs), []
        settle(lambda: None, 2, lambda fn: (made.append(1), next(it))[1], **limits)
        return len(made)

    assert calls_made([0.1, 0.3, 0.05, 0.3, 0.04, 0.05] + [0.04] * 30) == 5  # until one is within 2x the fastest
    assert calls_made([0.001] * 30) == 20  # fast calls: up to `most`, short of half a second
    assert calls_made([0.3, 0.3, 0.3]) == 2  # slow, steady calls: the warm-up asked for
    assert calls_made([0.01, 0.03] * 20, most=9) == 9  # never settling: at most `most`
    costs = iter([0.1, 0.3, 0.05, 0.3, 0.04] + [0.01] * 3)
    assert timed_interleaved({"f": lambda: None}, 3, warmup=2, timer=lambda fn: next(costs)) == {"f": [0.01] * 3}


def test_interleaved_rounds_take_the_callables_in_a_new_order_each_time() -> None:
    """No callable always follows the same neighbour (whose cache footprint it would inherit);
    the order is seeded, so two runs time the same sequence."""
    from dszoo.measurement.benchmark import timed_interleaved

    def sequence() -> list[str]:
        seen: list[str] = []
        fns = {name: (lambda name=name: seen.append(name)) for name in "abcd"}
        times = timed_interleaved(fns, 30, warmup=1, timer=lambda fn: (fn(), 0.001)[1])
        assert {k: len(v) for k, v in times.items()} == dict.fromkeys("abcd", 30)
        return seen[-120:]  # the timed calls, after each one's warm-up

    timed = sequence()
    assert timed == sequence() and all(sorted(timed[i:i + 4]) == list("abcd") for i in range(0, 120, 4))
    followers = {timed[i + 1] for i in range(119) if timed[i] == "d" and i % 4 != 3}  # within a round
    assert followers == set("abc")


def test_a_ceiling_bounds_every_row_and_results_are_written_as_they_come(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from dszoo.measurement import benchmark as bench

    rows = [bench.BenchRow("m", "gemms", 1, 1.0, 1.0, 1.0, 1.0, 150.0, 0.0), bench.BenchRow("m", "ours", 1, 2.0, 2.0, 2.0,
                                                                                        0.5, 30.0, 0.0)]
    logged: list[str] = []
    ceilings = {"fp32": 200.0}
    out = bench._assemble(rows, {}, ceilings, 10.0, logged.append)
    assert out["gemm_gflops"] == ceilings["fp32"] == 300.0 and [r["ceiling_fraction"] for r in out["rows"]] == [1.0, 0.2]
    assert logged == ["fp32 ceiling raised to 300.0 G/s, the rate of m gemms b1 (above the 200.0 measured)"]
    assert rows[0].ceiling_fraction == 0.0  # the measured rows are left as they were

    script = command_module("benchmark")
    written = []

    def interrupted_run(models, *args, on_progress, **kwargs):
        on_progress({"machine": {"cpu": "x", "threads": 2, "torch": "t"}, "gemm_gflops": 1.0, "memory_gbs": 1.0,
                     "repeats": 3, "malloc_tuned": True, "rows": [dict(bench.asdict(rows[1]), model=models[0])]})
        written.append((json.loads((tmp_path / "b.json").read_text()), (tmp_path / "b.md").read_text()))
        raise KeyboardInterrupt

    monkeypatch.setattr(script, "run_benchmarks", interrupted_run)
    with pytest.raises(KeyboardInterrupt):
        script.main(["--models", "ds_cnn_s", "--json", str(tmp_path / "b.json"), "--markdown", str(tmp_path / "b.md")])
    (data, table), = written
    assert [r["model"] for r in data["rows"]] == ["ds_cnn_s"] and "| ds_cnn_s | ours | 1 | 2.00 |" in table
    assert (tmp_path / "b.json").is_file()  # what was finished stays


def test_benchmark_script_passes_default_malloc(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    script = command_module("benchmark")
    seen = {}

    def fake_run(models, batch_sizes, repeats, train_batch, backends, log, tune_malloc, profile_top, compare_backends,
                 ceiling_sizes, precisions, on_progress):
        seen["tune_malloc"] = tune_malloc
        assert tuple(ceiling_sizes) == (1024,)  # --quick: a small product for the ceiling
        assert list(precisions) == []  # --quick: fp32 alone
        return {"machine": {"cpu": "x", "threads": "2", "torch": "t"}, "gemm_gflops": 1.0, "memory_gbs": 1.0,
                "repeats": repeats,
                "malloc_tuned": tune_malloc, "rows": []}

    monkeypatch.setattr(script, "run_benchmarks", fake_run)
    assert script.main(["--quick", "--default-malloc"]) == 0
    assert seen == {"tune_malloc": False} and "glibc malloc default" in capsys.readouterr().out
    assert script.main(["--quick"]) == 0
    assert seen == {"tune_malloc": True} and "glibc malloc tuned" in capsys.readouterr().out


def test_top_operators_names_the_operator_that_takes_the_time() -> None:
    a, b, v = torch.randn(512, 512), torch.randn(512, 512), torch.randn(512)
    ops = top_operators(lambda: (torch.mm(a, b), torch.mm(a, b), v + 1), runs=2, top=2)
    assert len(ops) == 2
    assert ops[0]["operator"] == "aten::mm" and ops[0]["input_shapes"] == [[512, 512], [512, 512]]
    assert ops[0]["calls"] == 2 and ops[0]["self_ms"] > 0 and ops[0]["share"] > 0.5
    assert ops[1]["share"] <= ops[0]["share"]


def test_onednn_primitives_names_each_convolution_and_its_time(capfd: pytest.CaptureFixture[str]) -> None:
    """Three convolutions in channels-last run three oneDNN convolution primitives per call,
    each named by its shape; nothing the model does outside oneDNN is counted, and the log is
    off again afterwards."""
    model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, stride=2, padding=1, groups=16),
                          nn.Conv2d(16, 4, 3, padding=1)).eval().to(memory_format=torch.channels_last)
    x = torch.randn(2, 8, 20, 20).contiguous(memory_format=torch.channels_last)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # on one thread PyTorch runs the small 1x1 conv outside oneDNN
    try:
        with torch.no_grad():
            prims = onednn_primitives(lambda: model(x).sum(), runs=2, top=10)
    finally:
        torch.set_num_threads(threads)
    convs = {op["layer"]: op for op in prims["top"] if op["primitive"] == "convolution"}
    assert set(convs) == {"1x1 conv 8 -> 16 at 20x20", "depthwise 3x3 s2, 16 channels at 20x20",
                          "3x3 conv 16 -> 4 at 10x10"}
    assert all(op["calls"] == 1 and op["ms"] > 0 for op in convs.values())
    assert convs["1x1 conv 8 -> 16 at 20x20"]["problem"] == "mb2_ic8oc16_ih20oh20kh1sh1dh0ph0_iw20ow20kw1sw1dw0pw0"
    # eager convs also reorder their weights into oneDNN's blocked layouts on every call
    assert {op["primitive"] for op in prims["top"]} == {"convolution", "reorder"}
    assert prims["calls"] == sum(op["calls"] for op in prims["top"]) and len(prims["top"]) < 10
    assert sum(op["share"] for op in prims["top"]) == pytest.approx(1)
    assert prims["total_ms"] == pytest.approx(sum(op["ms"] for op in prims["top"])) and prims["total_ms"] < prims["wall_ms"]
    capfd.readouterr()
    with torch.no_grad():
        model(x)
    assert "onednn_verbose" not in capfd.readouterr().out


def test_onednn_primitives_without_onednn(monkeypatch: pytest.MonkeyPatch) -> None:
    """A torch built without oneDNN: no primitives, and the profile says so instead of failing."""
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    calls = []
    prims = onednn_primitives(lambda: calls.append(1), runs=3)
    assert prims["calls"] == 0 and prims["top"] == [] and prims["total_ms"] == 0 and len(calls) == 4
    assert command_module("benchmark").onednn_markdown(prims) == [
        "oneDNN primitives: none ran (this variant does not use oneDNN, or torch was built without it)."]


@pytest.mark.parametrize("kind, problem, post_ops, text", [
    ("convolution", "mb8_ic728oc728_ih19oh19kh1sh1dh0ph0_iw19ow19kw1sw1dw0pw0", "eltwise_clip_v2:0:6+dw:k3s2p1",
     "1x1 conv 728 -> 728 at 19x19 + depthwise 3x3 s2"),
    ("convolution", "g32mb8_ic32oc32_ih112oh112kh3sh1dh0ph1_iw112ow112kw3sw1dw0pw1", "",
     "depthwise 3x3, 32 channels at 112x112"),
    ("convolution", "g2mb1_ic4oc8_ih9oh5kh3sh2dh0ph1_iw9ow5kw3sw2dw0pw1", "", "3x3 conv s2 4 -> 8 (2 groups) at 9x9"),
    ("convolution", "mb1_ic4oc8_id5od5kd1sd1dd0pd0_ih5oh5kh1sh1dh0ph0_iw5ow5kw1sw1dw0pw0", "",
     "convolution mb1_ic4oc8_id5od5kd1sd1dd0pd0_ih5oh5kh1sh1dh0ph0_iw5ow5kw1sw1dw0pw0"),
    ("reorder", "8x728x19x19", "", "reorder 8x728x19x19"),
])
def test_describe_onednn_problem(kind: str, problem: str, post_ops: str, text: str) -> None:
    assert describe_onednn_problem(kind, problem, post_ops) == text


def test_layer_gemms_runner_computes_each_product() -> None:
    """Each bare GEMM is input @ weight.T, as F.linear computes it; products of one shape share
    their matrices."""
    gemms = LayerGemms([(5, 3, 4), (7, 6, 2), (5, 3, 4)])
    gemms()
    assert gemms.macs == 2 * 5 * 3 * 4 + 7 * 6 * 2
    assert [out.shape for out in gemms.outputs] == [(5, 4), (7, 2), (5, 4)]
    for (a, w), out in zip(gemms.operands, gemms.outputs):
        torch.testing.assert_close(out, nn.functional.linear(a, w))
    assert gemms.operands[0][0] is gemms.operands[2][0] and gemms.outputs[0] is gemms.outputs[2]
    assert gemms.operands[0][0] is not gemms.operands[1][0]


def test_roofline_takes_the_slower_of_compute_and_memory_per_layer() -> None:
    # 1 GMAC at 100 GFLOP/s is 20 ms; 10 GB at 10 GB/s is 1000 ms
    layers = [(10**9, 10**6), (10**6, 10**10)]
    assert roofline_ms(layers, gflops=100.0, gbs=10.0) == pytest.approx(20.0 + 1000.0)
