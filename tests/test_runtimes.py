"""The edge runtimes (dszoo.deployment.runtimes): each file written, loaded back into its own
runtime and run there; int8 files computed in int8 by their runtime and agreeing with fp32 on
held-out real data. Each runtime is an extra that the README's test command installs."""
from __future__ import annotations

import csv
import tempfile
import textwrap
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_in_process, structural_variants
from dszoo import create_model, list_models
from dszoo.deployment.export import export_model, randomise_batchnorm_statistics, read_export_metadata
from dszoo.deployment.runtimes import EDGE_RUNTIMES, RUNTIMES
from dszoo.training.data import build_datasets

INT8_RUNTIMES = [fmt for fmt, runtime in RUNTIMES.items() if "int8" in runtime.precisions]


def _file(tmp_path: Path, fmt: str, stem: str = "m") -> Path:
    return tmp_path / f"{stem}{RUNTIMES[fmt].suffixes[0]}"


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_an_fp32_file_computes_in_its_runtime_what_eager_computes(fmt: str, tmp_path: Path) -> None:
    """MobileNetV3-Small as TensorFlow built it (hard-swish, squeeze-excite with hard-sigmoid,
    "same" padding computed at run time, the head conv), written and run back in the runtime at
    batch sizes it was not traced with (ExecuTorch: the keyword spotter in test_interop)."""
    model = randomise_batchnorm_statistics(create_model("mobilenet_v3_small_075_tf", input_size=96))
    out = _file(tmp_path, fmt)
    check = export_model(model, fmt, out, (3, 96, 96))
    assert check.relative_difference <= 1e-4 and check.randomised_relative_difference is None
    run = RUNTIMES[fmt].load([str(out), *map(str, RUNTIMES[fmt].companions(out))])
    for batch in (1, 5):
        x = torch.randn(batch, 3, 96, 96)
        with torch.no_grad():
            expected = model(x)
        assert (run(x) - expected).abs().max() <= 1e-4 * expected.abs().max()
    assert read_export_metadata(out)["precision"] == "fp32"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, *(c.name for c in RUNTIMES[fmt].companions(out))])


@pytest.mark.parametrize("fmt", INT8_RUNTIMES)
def test_an_int8_file_is_computed_in_int8_by_its_runtime(fmt: str, tmp_path: Path,
                                                         capfd: pytest.CaptureFixture[str]) -> None:
    """Every conv and the classifier of the DS-CNN (its first conv a Conv2d subclass) run in
    int8 in the runtime, which agrees with fp32 on the inputs held out of calibration; the
    libraries say nothing meanwhile (no warning, no log line, nothing from C++ on stderr)."""
    model = randomise_batchnorm_statistics(create_model("ds_cnn_s"))
    calibration = [torch.randn(8, 1, 49, 10) for _ in range(3)]
    out = _file(tmp_path, fmt)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check = export_model(model, fmt, out, (1, 49, 10), precision="int8", calibration=calibration)
    assert [str(w.message)[:100] for w in caught] == [] and capfd.readouterr().err == ""
    assert (check.layers, check.float_layers) == (10, ())
    assert check.held_out == 8 and check.cosine >= 0.99 and check.top1_agreement >= 0.9
    assert read_export_metadata(out)["precision"] == "int8"


# ExecuTorch's int8 lowering of this network takes 25 s: its int8 is checked on the DS-CNN above, and
# its accuracy on digits and speech measured in docs/performance.md
@pytest.mark.parametrize("fmt", [fmt for fmt in INT8_RUNTIMES if fmt != "pte"])
def test_int8_in_every_runtime_keeps_the_trained_digits_accuracy(fmt: str, default_run: tuple[Path, Any],
                                                                 tmp_path: Path) -> None:
    """The main job's model in int8, calibrated on 64 digits training images by each runtime's
    own quantizer, run by that runtime on the real held-out split: within a point of fp32 and
    the same class on >= 98%."""
    trained_dir, trained = default_run
    assert trained.returncode == 0, trained.stderr
    out = _file(tmp_path, fmt, "digits_int8")
    res = run_in_process("export", ["--pretrained", str(trained_dir / "best.pt"), "--precision", "int8",
                                    "--calibration", "digits", "--calibration-images", "64", "--format", fmt,
                                    "--out", str(out)])
    assert res.returncode == 0, res.stderr
    assert "; 28 of its 28 conv/linear layers in int8" in res.stdout  # 27 convs and the classifier
    model = create_model("mobilenet_v1_025", pretrained=trained_dir / "best.pt", num_classes=10,
                         input_size=(1, 32, 32)).eval()
    x, y = build_datasets("digits", model.pretrained_cfg).val.tensors
    int8 = RUNTIMES[fmt].load([str(out), *map(str, RUNTIMES[fmt].companions(out))])(x).argmax(1)
    with torch.no_grad():
        fp32 = model(x).argmax(1)
    top1 = lambda pred: 100.0 * (pred == y).float().mean().item()  # noqa: E731
    assert len(y) == 360 and abs(top1(int8) - top1(fp32)) <= 1.0, (top1(int8), top1(fp32))
    assert (int8 == fp32).float().mean().item() >= 0.98


def test_a_layer_a_runtime_keeps_in_floating_point_is_named(tmp_path: Path) -> None:
    """OpenVINO's int8 runs attention's matrix products in floating point: the command names
    the layer, in one line."""
    yaml = tmp_path / "hybrid.yaml"
    yaml.write_text(textwrap.dedent("""\
        stem: {type: conv, out: 16, kernel: 3, stride: 2}
        stages:
          - {type: fused, out: 24, expand: 2, stride: 2}
          - {type: mqa, out: 24, heads: 2, key_dim: 8, kv_stride: 2, same_stage: true}
        head: {pool: avg}
        """))
    out = tmp_path / "hybrid.xml"
    res = run_in_process("export", ["--model", str(yaml), "--num-classes", "4", "--input-size", "3", "32", "32",
                                    "--precision", "int8", "--calibration", "digits", "--format", "openvino",
                                    "--out", str(out)])
    assert res.returncode == 0, res.stderr
    note = next((line for line in res.stdout.splitlines() if line.startswith("note: OpenVINO computes")), "")
    assert "stages.1.0.attn (scaled_dot_product_attention)" in note, res.stdout


def test_openvino_weights_beside_out_are_never_replaced(tmp_path: Path) -> None:
    """An OpenVINO IR is two files: the user's ``.bin`` beside ``--out`` is kept without --overwrite;
    a write that fails (OpenVINO's C++ writer on a full disk) is one line and leaves neither file."""
    out, weights = tmp_path / "kws.xml", tmp_path / "kws.bin"
    weights.write_bytes(b"mine")
    res = run_in_process("export", ["--model", "ds_cnn_s", "--format", "openvino", "--out", str(out)])
    assert res.returncode == 2
    assert res.stderr == (f"error: --out {out}: its openvino weights file {weights} exists; pass --overwrite to "
                          "replace it\n")
    assert weights.read_bytes() == b"mine" and not out.exists()
    res = run_in_process("export", ["--model", "ds_cnn_s", "--format", "openvino", "--out", str(out), "--overwrite"])
    assert res.returncode == 0, res.stderr
    assert weights.read_bytes() != b"mine" and sorted(p.name for p in tmp_path.iterdir()) == ["kws.bin", "kws.xml"]
    import openvino

    def full_disk(*_: Any, **__: Any) -> None:  # what its C++ writer raises when the disk fills
        raise RuntimeError("basic_ios::clear: iostream error")

    original, openvino.save_model = openvino.save_model, full_disk
    try:
        res = run_in_process("export", ["--model", "ds_cnn_s", "--format", "openvino", "--out", str(tmp_path / "new.xml")])
    finally:
        openvino.save_model = original
    assert (res.returncode, res.stderr) == (2, f"error: {tmp_path / 'new.bin'}: OpenVINO could not write it "
                                               "(basic_ios::clear: iostream error); is the disk full?\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kws.bin", "kws.xml"]


@pytest.fixture(scope="module")
def keyword_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Every keyword said by two eSpeak NG speakers: fixed clips (seeded) of the spotter's task."""
    from dszoo.audio.make_data import generate_speech_data
    from dszoo.audio.speech_commands import KEYWORDS

    root = tmp_path_factory.mktemp("keywords")
    generate_speech_data(root, speakers_count=2, words=KEYWORDS, seed=3, noise_seconds=1, engines=["espeak"])
    return sorted(p for p in root.glob("*/*.wav") if p.parent.name != "_background_noise_")


@pytest.mark.parametrize("fmt", EDGE_RUNTIMES)
def test_the_keyword_spotter_hears_the_same_in_every_runtime(fmt: str, keyword_clips: list[Path]) -> None:
    """The shipped spotter's network exported to the runtime and run there gives the PyTorch
    spotter's posteriors (within 1e-4), and so its keywords; the file names its front end."""
    from dszoo.audio.speech_commands import read_wav
    from dszoo.audio.spot import load_spotter

    waves = torch.stack([torch.from_numpy(read_wav(p)[0]) for p in keyword_clips])
    reference = load_spotter().posteriors(waves)
    spotter = load_spotter()
    with tempfile.TemporaryDirectory() as folder:
        assert spotter.run_in(fmt, folder).startswith(f"{RUNTIMES[fmt].runtime} runs the network (spotter")
        assert (spotter.posteriors(waves) - reference).abs().max() <= 1e-4
        written = Path(folder) / f"spotter{RUNTIMES[fmt].suffixes[0]}"
        assert read_export_metadata(written)["input"]["mfcc"] == "narrowband"
    assert len(keyword_clips) == 20


def test_dszoo_spot_in_a_runtime_names_the_same_keywords(keyword_clips: list[Path]) -> None:
    """``dszoo-spot --runtime``: the same lines as the PyTorch spotter, after a note saying where
    the network runs (the runtimes' own agreement: above)."""
    clips = [str(p) for p in keyword_clips[:3]]
    pytorch, in_runtime = run_in_process("spot", clips), run_in_process("spot", [*clips, "--runtime", "onnx"])
    assert in_runtime.returncode == 0, in_runtime.stderr
    assert in_runtime.stdout.splitlines()[1:] == pytorch.stdout.splitlines()
    assert in_runtime.stdout.startswith("note: ONNX Runtime runs the network (spotter.onnx: max relative difference")


def test_the_benchmark_times_every_runtime_side_by_side(tmp_path: Path) -> None:
    """One run: PyTorch eager and optimized, and each runtime's checked file, fp32 and int8,
    timed on the same inputs; CSV and plot beside the table."""
    from dszoo.measurement.runtime_benchmark import run_runtime_benchmarks, runtime_csv

    # fp32: each precision is the same loop, and an int8 optimized path compiles for 10 s
    result = run_runtime_benchmarks(["ds_cnn_s"], batch_sizes=(1, 2), repeats=2, runtimes=("onnx", "openvino"),
                                    precisions=("fp32",))
    rows = {(r["runtime"], r["precision"], r["batch"]): r for r in result["rows"]}
    assert set(rows) == {(runtime, "fp32", batch) for runtime in ("pytorch eager", "pytorch optimized", "onnx", "openvino")
                         for batch in (1, 2)}
    for r in rows.values():
        eager = rows[("pytorch eager", "fp32", r["batch"])]["median_ms"]
        assert r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["params"] == 23_180 and r["imagenet_top1"] is None
        assert r["speedup_vs_eager"] == pytest.approx(eager / r["median_ms"])
    assert runtime_csv(result).splitlines()[0] == ("model,params,runtime,precision,batch,median_ms,min_ms,max_ms,"
                                                   "speedup_vs_eager,imagenet_top1,note")
    res = run_in_process("benchmark", ["--runtimes", "onnx", "--quick", "--csv", str(tmp_path / "r.csv"), "--plot",
                                       str(tmp_path / "r.png")])
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert [line.split(",")[2:4] for line in lines[1:]] == [["pytorch eager", "fp32"], ["pytorch optimized", "fp32"],
                                                          ["onnx", "fp32"]]
    assert (tmp_path / "r.png").read_bytes().startswith(b"\x89PNG")
    assert "| ds_cnn_s | 0.02M | - | 1 | onnx | fp32 |" in res.stdout  # no published ImageNet top-1


@pytest.mark.parametrize("args, message", [
    (["--runtimes", "--precisions", "int8"], "--runtimes times each runtime's own files on this CPU; it does not take "
                                             "--precisions"),
    (["--runtimes", "--quick", "--models", "ds_cnn_s"], "--quick sets its own models, batch sizes and repeats; drop "
                                                        "--models"),
    (["--csv", "x.csv"], "--csv writes --runtimes' rows; add --runtimes"),
])
def test_benchmark_runtime_options_are_checked(args: list[str], message: str) -> None:
    res = run_in_process("benchmark", args)
    assert res.returncode == 2 and res.stderr == f"error: {message}\n"


def test_runtime_accuracy_and_support_score_each_runtimes_file(default_run: tuple[Path, Any]) -> None:
    """The tables of docs/performance.md: the trained digits model's top-1 in PyTorch and in ONNX
    Runtime (PyTorch's predictions, in fp32), and which exports pass their check."""
    from dszoo.measurement.runtime_benchmark import runtime_accuracy, runtime_support
    from dszoo.training.data import calibration_examples

    trained_dir, _ = default_run
    model = create_model("mobilenet_v1_025", pretrained=trained_dir / "best.pt", num_classes=10,
                         input_size=(1, 32, 32)).eval()
    data = build_datasets("digits", model.pretrained_cfg)
    x, y = data.val.tensors
    rows = runtime_accuracy(model, x, y, calibration_examples(data.train, 64), runtimes=("onnx",),
                            precisions=("fp32",))
    with torch.no_grad():
        top1 = 100.0 * (model(x).argmax(1) == y).float().mean().item()
    assert rows == [{"runtime": "pytorch eager", "precision": "fp32", "top1": top1, "same_as_fp32": 100.0},
                    {"runtime": "onnx", "precision": "fp32", "top1": top1, "same_as_fp32": 100.0}]
    (row,) = runtime_support(["ds_cnn_s"], runtimes=("onnx",))
    assert row["ok"] and row["detail"].startswith("max relative difference vs the model on a fresh batch")


def test_the_runtime_support_record_covers_the_registry() -> None:
    """docs/runtime_support.csv, the registry-wide sweep (``runtime_support``: about an hour, so a
    record, not a test run): every registered model in ONNX Runtime, OpenVINO and ExecuTorch at
    fp32, every distinct network (``structural_variants``) in all three at int8; each row passed
    ``dszoo-export``'s check. A model registered without being swept, or a row of a model no
    longer registered, fails here."""
    path = Path(__file__).resolve().parents[1] / "docs" / "runtime_support.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    swept = {(r["model"], r["runtime"], r["precision"]) for r in rows}
    assert len(swept) == len(rows)  # one row a pair
    runtimes = ("onnx", "openvino", "pte")
    wanted = {(name, runtime, "fp32") for name in list_models() for runtime in runtimes}
    wanted |= {(name, runtime, "int8") for name in structural_variants() for runtime in runtimes}
    assert swept == wanted
    assert all(r["ok"] == "True" for r in rows), [r for r in rows if r["ok"] != "True"]
    assert max(float(r["max_relative_difference"]) for r in rows if r["precision"] == "fp32") <= 1e-4
    assert min(float(r["cosine"]) for r in rows if r["precision"] == "int8") >= 0.99
