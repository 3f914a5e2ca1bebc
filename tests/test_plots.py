"""Plots read on their own: titles that say what is shown, labelled axes with units, log scales
marked, every point traceable to its model, a spike that does not squash a curve."""
from __future__ import annotations

import pytest

from dszoo.commands.benchmark import VARIANT_LABELS, benchmark_figure, runtime_figure
from dszoo.commands.summarize import summary_figure
from dszoo.measurement.summary import summarize
from dszoo.training.run_files import curves_figure


def _history(train_loss: list[float]) -> list[dict[str, float]]:
    return [dict(epoch=i + 1, train_loss=v, val_loss=v * 1.1, val_top1=10.0 * i, lr=1e-3, seconds=1.0)
            for i, v in enumerate(train_loss)]


def test_curves_have_labelled_axes_and_titles() -> None:
    fig = curves_figure(_history([2.3, 1.5, 1.0, 0.8, 0.7, 0.6]))
    loss, top1 = fig.axes
    assert (loss.get_xlabel(), loss.get_ylabel()) == ("epoch", "cross-entropy loss")
    assert (top1.get_xlabel(), top1.get_ylabel()) == ("epoch", "validation top-1 accuracy (%)")
    assert loss.get_title() and top1.get_title()
    assert not loss.texts  # nothing off the scale
    assert loss.get_ylim()[1] >= 2.3 * 1.1


def test_a_loss_spike_is_marked_not_allowed_to_squash_the_curve() -> None:
    fig = curves_figure(_history([2.3, 1.5, 1.0, 9000.0, 0.7, 0.6, 0.55, 0.5]))
    loss = fig.axes[0]
    low, high = loss.get_ylim()
    assert high < 10  # the curve keeps its shape
    assert sorted(t.get_text() for t in loss.texts) == ["9.9e+03", "9e+03"]  # train and val spikes, labelled
    assert "off the scale" in loss.get_ylabel()


def test_summary_plot_says_what_it_shows() -> None:
    s = summarize("ds_cnn_s", compare_standard=True)
    fig = summary_figure(s)
    macs, params = fig.axes
    assert macs.get_yscale() == params.get_yscale() == "log"
    assert macs.get_ylabel() == "multiply-adds per image (log scale)"
    assert params.get_ylabel() == "parameters (log scale)" and params.get_xlabel() == "layer"
    title = macs.get_title()
    layers = s.standard.layers
    share = sum(r.macs for r in layers) / sum(r.standard_macs for r in layers)
    assert title.startswith(f"ds_cnn_s, input 1x49x10: its {len(layers)} depthwise-separable layers need {share:.1%} "
                            "of the multiply-adds")
    assert [t.get_text() for t in params.get_xticklabels()] == [r.name for r in layers]


def test_summary_plot_needs_the_standard_comparison() -> None:
    with pytest.raises(ValueError, match="compare_standard=True"):
        summary_figure(summarize("ds_cnn_s"))


def test_benchmark_plot_traces_every_point_to_its_model() -> None:
    rows = [dict(model=m, variant=v, batch=1, median_ms=ms, gmacs_per_s=g)
            for m, ms, g in (("mobilenet_v1", 10.0, 57.0), ("ds_cnn_s", 0.6, 4.4))
            for v in ("ours", "timm", "optimized")]
    rows.append(dict(model="mobilenet_v1", variant="ours", batch=8, median_ms=60.0, gmacs_per_s=76.0))  # not shown
    result = {"rows": rows, "repeats": 10, "machine": {"cpu": "Test CPU", "threads": "2", "torch": "2.x"}}
    ax = benchmark_figure(result).axes[0]
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert ax.get_xlabel() == "multiply-adds per image (GMAC, log scale)"
    assert ax.get_ylabel() == "latency at batch 1 (ms, log scale)"
    assert sorted(t.get_text() for t in ax.texts) == sorted(["mobilenet_v1", "ds_cnn_s"] * 3)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [VARIANT_LABELS[v] for v in ("ours", "timm", "optimized")]
    assert "Test CPU, 2 threads, torch 2.x" in ax.get_title()
    markers = {c.get_paths()[0].vertices.tobytes() for c in ax.collections}
    assert len(markers) == 2  # one marker shape per model


def _runtime_result(top1: dict[str, float]) -> dict:
    rows = [dict(model=m, params=p, runtime=rt, precision=pr, batch=b, median_ms=ms * b, imagenet_top1=top1.get(m))
            for m, p, ms in (("mobilenet_v4_conv_small", 3_774_024, 5.0), ("ds_cnn_s", 23_180, 0.2))
            for rt, pr in (("pytorch eager", "fp32"), ("onnx", "int8")) for b in (1, 8)]
    return {"rows": rows, "repeats": 10, "machine": {"cpu": "Test CPU", "threads": "2", "torch": "2.x"}}


def test_runtime_plot_shows_latency_against_parameters_and_published_top1() -> None:
    """Batch 1 only; the second panel holds the models with a published ImageNet top-1 alone."""
    by_params, by_top1 = runtime_figure(_runtime_result({"mobilenet_v4_conv_small": 73.756})).axes
    assert by_params.get_xscale() == by_params.get_yscale() == by_top1.get_yscale() == "log"
    assert by_top1.get_xscale() == "linear"
    assert by_params.get_xlabel() == "parameters (millions, log scale)"
    assert by_top1.get_xlabel() == "published ImageNet-1k top-1 of the model's weights (%)"
    assert by_params.get_ylabel() == by_top1.get_ylabel() == "latency at batch 1 (ms, log scale)"
    assert sorted(t.get_text() for t in by_params.texts) == sorted(["mobilenet_v4_conv_small", "ds_cnn_s"] * 2)
    assert [t.get_text() for t in by_top1.texts] == ["mobilenet_v4_conv_small"] * 2
    assert [tuple(c.get_offsets()[0]) for c in by_top1.collections] == [(73.756, 5.0)] * 2
    assert [t.get_text() for t in by_top1.get_legend().get_texts()] == ["pytorch eager fp32", "onnx int8"]
    colour = {c.get_label(): tuple(c.get_facecolor()[0]) for c in by_params.collections}
    assert {c.get_label(): tuple(c.get_facecolor()[0]) for c in by_top1.collections} == colour  # a series keeps its colour
    assert len(set(colour.values())) == 2
    assert "Test CPU, 2 threads, torch 2.x" in by_top1.get_title()


def test_runtime_plot_without_a_published_top1_has_one_panel() -> None:
    (ax,) = runtime_figure(_runtime_result({})).axes
    assert ax.get_xlabel() == "parameters (millions, log scale)"
