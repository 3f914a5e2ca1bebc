"""Benchmark dszoo models against timm, the optimized path, standard convs and the GEMM ceiling.

    python scripts/benchmark.py                      # the README's performance table
    python scripts/benchmark.py --quick              # a smoke test (CI)
    python scripts/benchmark.py --models xception --batch-sizes 1 8 32 --json out.json --plot out.png
    python scripts/benchmark.py --models mobilenet_v1 xception --batch-sizes 8 --profile profile.md
    python scripts/benchmark.py --compare-backends inductor  # the default compiler against inductor
    python scripts/benchmark.py --models mobilenet_v1 --batch-sizes 8 --precisions int8  # int8 beside fp32
    python scripts/benchmark.py --runtimes --csv runtimes.csv --plot runtimes.png  # every edge runtime, fp32 and int8
    python scripts/benchmark.py --streaming          # a keyword stream: per 20 ms hop against the sliding window
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from ..registry import list_models
from ..files import atomic_path
from ..measurement.benchmark import LOW_PRECISIONS, run_benchmarks
from ..measurement.runtime_benchmark import run_runtime_benchmarks, runtime_csv, runtime_markdown
from .cli import ArgumentParser, UsageError, new_output_file, positive_int, run_cli
from ..deployment.optimize import BACKENDS
from ..deployment.runtimes import EDGE_RUNTIMES

RUNTIME_MODELS = ["mobilenet_v2", "mobilenet_v3_large", "ds_cnn_s"]
"""``--runtimes``' default models."""

DEFAULT_MODELS = ["mobilenet_v1", "mobilenet_v1_075", "mobilenet_v1_050", "mobilenet_v1_025",
                  "xception", "ds_cnn_s", "ds_cnn_m", "ds_cnn_l"]


def markdown(result: dict) -> str:
    lines = ["| model | variant | batch | median ms | spread ms | img/s | GMAC/s | of GEMM ceiling | roofline ms "
             "| of roofline | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        roof = (f"{r['roofline_ms']:.2f} | {r['roofline_fraction']:.1%}" if r.get("roofline_ms") is not None
                else "- | -")
        lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['median_ms']:.2f} | "
                     f"{r['min_ms']:.2f}-{r['max_ms']:.2f} | {r['images_per_s']:.1f} | {r['gmacs_per_s']:.1f} | "
                     f"{r['ceiling_fraction']:.1%} | {roof} | {r['note']} |")
    m = result["machine"]
    low = result.get("ceilings", {})
    head = (f"{m['cpu']}, {m['threads']} threads, torch {m['torch']}; fp32 GEMM ceiling "
            f"{result['gemm_gflops']:.1f} GFLOP/s"
            + (f", int8 {low['int8']:.1f} GOP/s" if "int8" in low else "")
            + (f", bf16 {low['bf16']:.1f} GFLOP/s" if "bf16" in low else "")
            + f", memory bandwidth {result['memory_gbs']:.1f} GB/s; "
            f"medians of {result['repeats']} runs after warm-up; "
            f"glibc malloc {'tuned' if result['malloc_tuned'] else 'default'}")
    optimized = {(r["model"], r["batch"]): r["ceiling_fraction"] for r in result["rows"] if r["variant"] == "optimized"}
    bounds = [f"- {r['model']} at batch {r['batch']}: its layers' GEMMs alone take {r['median_ms']:.2f} ms, "
              f"{r['ceiling_fraction']:.1%} of the ceiling, so a forward pass whose layers run no faster "
              f"reaches at most {r['model_ceiling_bound']:.1%} of it; the optimized path reaches "
              f"{optimized[r['model'], r['batch']]:.1%}."
              for r in result["rows"] if r["variant"] == "gemms"]
    return head + "\n\n" + "\n".join(lines) + ("\n\n" + "\n".join(bounds) if bounds else "")


def onednn_markdown(dnnl: dict) -> list[str]:
    """Lines of the table of top oneDNN primitives (``dszoo.benchmark.onednn_primitives``)."""
    if not dnnl["calls"]:
        return ["oneDNN primitives: none ran (this variant does not use oneDNN, or torch was built without it)."]
    lines = [f"oneDNN primitives: {dnnl['total_ms']:.2f} ms of a {dnnl['wall_ms']:.2f} ms call "
             f"({dnnl['total_ms'] / dnnl['wall_ms']:.0%}), in {dnnl['calls']:g} primitive calls; the top ones:", "",
             "| layer | implementation | post-ops | calls | ms | share |", "|---|---|---|---|---|---|"]
    return lines + [f"| {op['layer']} | {op['implementation']} | {op['post_ops']} | {op['calls']:g} | {op['ms']:.2f} | "
                    f"{op['share']:.1%} |" for op in dnnl["top"]]


def profile_markdown(result: dict) -> str:
    """The ``torch.profiler`` top-operator tables of ``result["profiles"]``, one per variant, each
    followed by its top oneDNN primitives (which name the kernels inside fused partitions)."""
    parts = []
    for p in result["profiles"]:
        lines = [f"### {p['model']}, {p['variant']}, batch {p['batch']}", "",
                 "| operator | input shapes | calls | self ms | share |", "|---|---|---|---|---|"]
        lines += [f"| {op['operator']} | {', '.join(str(s) for s in op['input_shapes'])} | {op['calls']:g} | "
                  f"{op['self_ms']:.2f} | {op['share']:.1%} |" for op in p["operators"]]
        parts.append("\n".join(lines + [""] + onednn_markdown(p["onednn"])))
    return "\n\n".join(parts) + "\n"


VARIANT_LABELS = {"ours": "ours, eager", "ours-cl": "ours, eager channels-last", "timm": "timm, eager",
                  "optimized": "ours, optimize_for_inference", "standard": "ours with standard convs"}
"""The variants the plot shows, and how its legend names them."""


def benchmark_figure(result: dict) -> Any:
    """Latency at batch 1 against multiply-adds per image, log-log: one colour per variant, one
    marker per model, each point labelled with its model, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["variant"] in VARIANT_LABELS and r["batch"] == 1]
    models = list(dict.fromkeys(r["model"] for r in rows))
    markers = dict(zip(models, "osD^vP*Xh<>p"))
    fig, ax = plt.subplots(figsize=(9, 6))
    for variant, label in VARIANT_LABELS.items():
        mine = [r for r in rows if r["variant"] == variant]
        color = None
        for r in mine:
            x = r["gmacs_per_s"] * r["median_ms"] / 1e3 / r["batch"]
            dot = ax.scatter([x], [r["median_ms"]], marker=markers.get(r["model"], "o"), color=color,
                             label=label if color is None else None)
            color = dot.get_facecolor()[0]
            ax.annotate(r["model"], (x, r["median_ms"]), textcoords="offset points", xytext=(4, 3), fontsize=6,
                        color=color)
    _log_log(fig, ax, result, "multiply-adds per image (GMAC, log scale)", "latency at batch 1 (ms, log scale)",
             "variant (colour); markers and labels: model", "Latency against multiply-adds")
    return fig


def runtime_figure(result: dict) -> Any:
    """``--runtimes``: latency at the smallest batch against parameter count, log-log, and, where
    any model run has a published ImageNet top-1 (``dszoo.imagenet_top1``), against that top-1 in
    a second panel (the models without one left out of it): one series per (runtime, precision),
    each point labelled with its model, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batch = min(r["batch"] for r in result["rows"])
    rows = [r for r in result["rows"] if r["batch"] == batch]
    rated = [r for r in rows if r.get("imagenet_top1") is not None]
    fig, axes = plt.subplots(1, 2 if rated else 1, figsize=(16 if rated else 9, 6), squeeze=False)
    panels = [(axes[0][0], rows, lambda r: r["params"] / 1e6)]
    if rated:
        panels.append((axes[0][1], rated, lambda r: r["imagenet_top1"]))
    colours = {key: f"C{i % 10}" for i, key in enumerate(dict.fromkeys((r["runtime"], r["precision"]) for r in rows))}
    for ax, shown, x_of in panels:  # a series keeps its colour in both panels
        for key in dict.fromkeys((r["runtime"], r["precision"]) for r in shown):
            mine = [r for r in shown if (r["runtime"], r["precision"]) == key]
            ax.scatter([x_of(r) for r in mine], [r["median_ms"] for r in mine], label=" ".join(key), color=colours[key])
            for r in mine:
                ax.annotate(r["model"], (x_of(r), r["median_ms"]), textcoords="offset points", xytext=(4, 3),
                            fontsize=6, color=colours[key])
    ylabel = f"latency at batch {batch} (ms, log scale)"
    _log_log(fig, axes[0][0], result, "parameters (millions, log scale)", ylabel, "runtime and precision",
             "Latency against parameters by runtime")
    if rated:
        _log_log(fig, axes[0][1], result, "published ImageNet-1k top-1 of the model's weights (%)", ylabel,
                 "runtime and precision", "Latency against accuracy by runtime", log_x=False)
    return fig


def _log_log(fig: Any, ax: Any, result: dict, xlabel: str, ylabel: str, legend: str, title: str,
             log_x: bool = True) -> None:
    """Both axes logarithmic (``log_x=False``: the y axis alone), their labels, the legend, and a
    title naming the run's machine."""
    if log_x:
        ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(title=legend, fontsize=8)
    m = result["machine"]
    ax.set_title(f"{title}, median of {result['repeats']} runs\n{m['cpu']}, {m['threads']} threads, torch {m['torch']}",
                 fontsize=10)
    fig.tight_layout()


def plot(result: dict, path: str, make_figure: Callable[[dict], Any] = benchmark_figure) -> None:
    """``make_figure(result)`` written atomically to ``path`` as PNG."""
    import matplotlib.pyplot as plt

    fig = make_figure(result)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", help=f"default: {' '.join(DEFAULT_MODELS)}")
    p.add_argument("--batch-sizes", nargs="+", type=positive_int, help="default: 1 8")
    p.add_argument("--repeats", type=positive_int, help="timed runs per row (default 10)")
    p.add_argument("--train-batch", type=positive_int, help="training-step batch (default 16)")
    p.add_argument("--threads", type=thread_count, help="torch.set_num_threads (default: torch's; at most 4 a core)")
    p.add_argument("--backends", nargs="+", choices=BACKENDS, help="optimized-path compilers to try, in order "
                   f"(default: {' '.join(BACKENDS)})")
    p.add_argument("--compare-backends", nargs="+", choices=BACKENDS, default=[],
                   help="also time the optimized path built with each of these alone (rows optimized-BACKEND)")
    p.add_argument("--precisions", nargs="*", choices=LOW_PRECISIONS,
                   help="also time the optimized path in these (default: int8 bf16, where this CPU runs them; "
                   "--quick: none), against ceilings of their own")
    p.add_argument("--default-malloc", action="store_true",
                   help="leave glibc malloc's settings alone (by default freed memory is kept for reuse, for every row)")
    p.add_argument("--json", help="write the results as JSON (updated as each model finishes)")
    p.add_argument("--markdown", help="write the results table as markdown (updated as each model finishes)")
    p.add_argument("--plot", help="write a PNG of latency against MACs")
    p.add_argument("--profile", help="write torch.profiler tables of the top operators, and of the top oneDNN "
                   "primitives, of every inference variant at the largest batch size, as markdown (run after "
                   "timing, so it slows no timed run)")
    p.add_argument("--profile-top", type=positive_int, help="rows per --profile table (default 10)")
    p.add_argument("--overwrite", action="store_true", help="replace --json/--plot/--profile files that exist")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: ours vs timm eager and compiled, fp32/TF32 and bf16 channels-last, inference and "
                   "training, timed with CUDA events (default models mobilenet_v1 xception, batches 1 64 256)")
    p.add_argument("--quick", action="store_true", help="small models, few repeats, no inductor (smoke test)")
    p.add_argument("--runtimes", nargs="*", choices=EDGE_RUNTIMES,
                   help="time each model in PyTorch eager, our optimized fp32 and int8, and these edge runtimes "
                   f"(none named: {' '.join(EDGE_RUNTIMES)}) in fp32 and int8, side by side (default models "
                   f"{' '.join(RUNTIME_MODELS)}; --quick: ds_cnn_s, fp32)")
    p.add_argument("--csv", help="--runtimes: write the rows as CSV")
    p.add_argument("--streaming", action="store_true", help="the streaming DS-CNN's cost per 20 ms hop against the "
                   "sliding-window scan's per 20 ms of audio (dszoo.audio.streaming), with --json, --markdown, --repeats")
    args = p.parse_args(argv)
    if args.runtimes is not None:
        return _run_runtimes(args)
    if args.streaming:
        return _run_streaming(args)
    if args.csv:
        raise UsageError("--csv writes --runtimes' rows; add --runtimes")
    if args.device == "cuda":
        return _run_on_gpu(args)
    chosen = [f"--{k.replace('_', '-')}" for k in ("models", "batch_sizes", "repeats", "train_batch", "backends",
                                                     "precisions")
              if getattr(args, k) is not None]
    if args.quick and chosen:
        raise UsageError(f"--quick sets its own models, batch sizes, repeats, backends and precisions; drop "
                         f"{', '.join(chosen)}")
    unknown = [m for m in args.models or [] if m not in list_models()]
    if unknown:
        raise UsageError(f"unknown models {unknown}; available: {', '.join(list_models())}")
    if args.json:
        new_output_file(args.json, args.overwrite, "--json", (".json",))
    if args.markdown:
        new_output_file(args.markdown, args.overwrite, "--markdown", (".md",))
    if args.plot:
        new_output_file(args.plot, args.overwrite, "--plot", (".png",))
    if args.profile:
        new_output_file(args.profile, args.overwrite, "--profile", (".md",))
        # kineto, torch.profiler's engine, logs a failed CUDA probe as an ERROR on CPU-only machines
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # its user-level messages only
    elif args.profile_top:
        raise UsageError("--profile-top sets the length of the --profile tables; add --profile FILE.md")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.models, args.batch_sizes, args.repeats, args.train_batch = ["ds_cnn_s", "mobilenet_v1_025"], [1, 2], 3, 4
        args.backends = ["onednn_graph", "torchscript", "eager"]
        args.precisions = []
    args.models = args.models or DEFAULT_MODELS
    args.batch_sizes = args.batch_sizes or [1, 8]
    args.repeats = args.repeats or 10
    args.train_batch = args.train_batch or 16
    args.backends = args.backends or list(BACKENDS)
    _check_memory(args.models, max([*args.batch_sizes, args.train_batch]))
    result = run_benchmarks(args.models, args.batch_sizes, args.repeats, args.train_batch, args.backends,
                            log=lambda s: print(s, file=sys.stderr), tune_malloc=not args.default_malloc,
                            profile_top=(args.profile_top or 10) if args.profile else 0,
                            compare_backends=args.compare_backends,
                            ceiling_sizes=(1024,) if args.quick else (2048, 4096),
                            precisions=LOW_PRECISIONS if args.precisions is None else args.precisions,
                            on_progress=lambda partial: write_results(partial, args))
    print(markdown(result))
    write_results(result, args)
    if args.plot:
        plot(result, args.plot)
    if args.profile:
        with atomic_path(args.profile) as tmp, open(tmp, "w") as fh:
            fh.write(profile_markdown(result))
    return 0


RUNTIME_OPTIONS = ("models", "batch_sizes", "repeats", "threads", "json", "markdown", "plot", "csv", "overwrite",
                   "quick", "runtimes", "device")
"""The options ``--runtimes`` takes."""


def _run_streaming(args: argparse.Namespace) -> int:
    """``--streaming``: ``dszoo.measurement.streaming_benchmark`` with this command's options."""
    from ..measurement.streaming_benchmark import streaming_benchmark, streaming_table

    other = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
             if k not in ("streaming", "repeats", "json", "markdown", "overwrite", "quick", "threads")
             and v not in (None, False, [], "cpu")]
    if other:
        raise UsageError(f"--streaming times one streaming model against its scan; it does not take {', '.join(other)}")
    for flag, suffix in (("json", ".json"), ("markdown", ".md")):
        if getattr(args, flag):
            new_output_file(getattr(args, flag), args.overwrite, f"--{flag}", (suffix,))
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = 3 if args.quick else args.repeats or 15
    result = streaming_benchmark(hops=50 if args.quick else 250, repeats=repeats, log=lambda s: print(s, file=sys.stderr))
    table = streaming_table(result)
    print(table)
    if args.json:
        with atomic_path(args.json) as tmp:
            Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    if args.markdown:
        with atomic_path(args.markdown) as tmp:
            Path(tmp).write_text(table + "\n")
    return 0


def _run_runtimes(args: argparse.Namespace) -> int:
    """``--runtimes``: ``dszoo.measurement.runtime_benchmark`` with this command's options."""
    defaults = {"device": "cpu", "compare_backends": [], "profile_top": None, "default_malloc": False}
    other = [f"--{k.replace('_', '-')}" for k, v in vars(args).items()
             if k not in RUNTIME_OPTIONS and v not in (None, False, defaults.get(k))]
    if other or args.device != "cpu":
        raise UsageError(f"--runtimes times each runtime's own files on this CPU; it does not take "
                         f"{', '.join(other) or '--device cuda'}")
    chosen = [f"--{k.replace('_', '-')}" for k in ("models", "batch_sizes", "repeats") if getattr(args, k) is not None]
    if args.quick and chosen:
        raise UsageError(f"--quick sets its own models, batch sizes and repeats; drop {', '.join(chosen)}")
    unknown = [m for m in args.models or [] if m not in list_models()]
    if unknown:
        raise UsageError(f"unknown models {unknown}; available: {', '.join(list_models())}")
    for flag, suffix in (("json", ".json"), ("markdown", ".md"), ("plot", ".png"), ("csv", ".csv")):
        if getattr(args, flag):
            new_output_file(getattr(args, flag), args.overwrite, f"--{flag}", (suffix,))
    models = ["ds_cnn_s"] if args.quick else args.models or RUNTIME_MODELS
    batch_sizes = [1] if args.quick else args.batch_sizes or [1, 8]
    _check_memory(models, max(batch_sizes))
    result = run_runtime_benchmarks(models, batch_sizes, 3 if args.quick else args.repeats or 10,
                                    runtimes=args.runtimes or EDGE_RUNTIMES,
                                    precisions=("fp32",) if args.quick else ("fp32", "int8"), threads=args.threads,
                                    log=lambda s: print(s, file=sys.stderr))
    table = runtime_markdown(result)
    print(table)
    for flag, text in (("json", json.dumps(result, indent=2)), ("markdown", table), ("csv", runtime_csv(result))):
        if getattr(args, flag):
            with atomic_path(getattr(args, flag)) as tmp, open(tmp, "w") as fh:
                fh.write(text)
    if args.plot:
        plot(result, args.plot, runtime_figure)
    return 0


def thread_count(text: str) -> int:
    """argparse type: threads from 1 to four a core (torch.set_num_threads of more fails deep in
    its allocator)."""
    from .cli import bounded_int

    return bounded_int(text, 4 * (os.cpu_count() or 1))


def _check_memory(models: Sequence[str], batch: int) -> None:
    """Refuse, before timing anything, a batch whose activations (kept for the training step's
    backward pass: twice the forward's) would not fit in the memory available."""
    from ..plan import plan_model
    from ..registry import get_model_config
    from ..training.options import available_memory

    available = available_memory()
    for name in models:
        plan = plan_model(get_model_config(name))
        need = 2 * plan.activation_bytes * batch + 4 * 4 * plan.params
        if available and need > available:
            raise UsageError(f"batch {batch} of {name} needs about {need / 2**30:,.1f} GiB, more than the "
                             f"{available / 2**30:.1f} GiB available here; lower --batch-sizes or --train-batch")


def write_results(result: dict, args: argparse.Namespace) -> None:
    """``--json`` and ``--markdown`` as they stand (after each model, then at the end), atomically:
    an interrupted run keeps every row it finished."""
    if args.json:
        with atomic_path(args.json) as tmp, open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
    if args.markdown:
        with atomic_path(args.markdown) as tmp, open(tmp, "w") as fh:
            fh.write(markdown(result) + "\n")


CPU_ONLY = ("backends", "compare_backends", "precisions", "profile", "markdown", "plot", "quick", "default_malloc", "threads")
"""Options of the CPU benchmark that ``--device cuda`` does not take."""


def _run_on_gpu(args: argparse.Namespace) -> int:
    """``--device cuda``: ``dszoo.measurement.device_benchmark`` with this command's options."""
    from ..measurement.device_benchmark import run_device_benchmarks

    given = [f"--{k.replace('_', '-')}" for k in CPU_ONLY if getattr(args, k) not in (None, False, [])]
    if given:
        raise UsageError(f"--device cuda does not take {', '.join(given)} (CPU benchmark options)")
    if not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available to this process")
    unknown = [m for m in args.models or [] if m not in list_models()]
    if unknown:
        raise UsageError(f"unknown models {unknown}; available: {', '.join(list_models())}")
    if args.json:
        new_output_file(args.json, args.overwrite, "--json", (".json",))
    result = run_device_benchmarks(args.models or ["mobilenet_v1", "xception"], torch.device("cuda"),
                                   args.batch_sizes or (1, 64, 256), args.train_batch or 64, args.repeats or 20,
                                   log=lambda s: print(s, file=sys.stderr))
    print(device_markdown(result))
    if args.json:
        with atomic_path(args.json) as tmp, open(tmp, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


def device_markdown(result: dict) -> str:
    """The GPU benchmark's table: one row per model, variant and batch, with its roofline."""
    c = result["ceilings_gflops"]
    head = (f"{result['device']}, torch {result['torch']}; fp32 products {c['fp32'] / 1e3:.1f} TFLOP/s, "
            f"{result['low_precision']} {c['bf16'] / 1e3:.1f} TFLOP/s, device copies {result['copy_gbs']:.0f} GB/s; "
            f"medians of {result['repeats']} runs timed with CUDA events")
    lines = ["| model | variant | batch | median ms | spread ms | img/s | roofline ms | of roofline | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        roof = f"{r['roofline_ms']:.3f} | {r['roofline_fraction']:.1%}" if r["roofline_ms"] is not None else "- | -"
        lines.append(f"| {r['model']} | {r['variant']} | {r['batch']} | {r['median_ms']:.3f} | {r['min_ms']:.3f}-"
                     f"{r['max_ms']:.3f} | {r['images_per_s']:.1f} | {roof} | {r['note']} |")
    return head + "\n\n" + "\n".join(lines)


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
