"""Summarise a dszoo model: layer table, params, MACs, and what separable convs save.

    python scripts/summarize.py --model xception
    python scripts/summarize.py --model mobilenet_v1 --compare-standard --format markdown
    python scripts/summarize.py --list
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Optional, Sequence

import yaml

from ..plan import plan_model
from ..registry import get_model_config, imagenet_top1, list_models
from ..files import atomic_path
from .cli import (ArgumentParser, UsageError, new_output_file, non_negative_int, positive_float, positive_int,
                        run_cli)
from ..measurement.summary import ModelSummary, summarize


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], markdown: bool) -> str:
    cells = [[f"{c:,}" if isinstance(c, int) and not isinstance(c, bool) else str(c) for c in row] for row in rows]
    if markdown:
        lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    fmt = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([fmt(headers), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def _shape(shape: Sequence[int]) -> str:
    return "x".join(map(str, shape))


def render(s: ModelSummary, fmt: str) -> str:
    """The summary as ``table`` (torchinfo + our tables) or ``markdown`` text."""
    md = fmt == "markdown"
    parts = [f"{'## ' if md else ''}{s.model}, input {_shape(s.input_size)}"]
    if not md:
        parts.append(s.table)
    parts.append(_table(
        ["part", "output", "params", "MACs"],
        [(r.name, _shape(r.output_shape), r.params, r.macs) for r in s.stages], md,
    ))
    parts.append(_table(["total", "value"], [
        ("params", s.params),
        ("trainable params", s.trainable_params),
        ("MACs (conv + linear, one image)", s.macs),
        *((("params, reparameterised (deployed)", s.deployed_params),
           ("MACs, reparameterised (deployed)", s.deployed_macs)) if s.deployed_params is not None else ()),
        ("torchinfo mult-adds", s.torchinfo_mult_adds),
        ("output shape", _shape(s.output_shape)),
        *((f"{precision} weights (bytes)", size) for precision, size in s.size_bytes.items()),
    ], md))
    if s.standard is not None:
        std = s.standard
        rows = [
            (r.name, f"{r.in_chs}->{r.mid_chs}->{r.out_chs}" if r.mid_chs else f"{r.in_chs}->{r.out_chs}", _shape(r.kernel),
             _shape(r.stride), r.params, r.standard_params, r.macs, r.standard_macs, f"{r.ratio:.4f}",
             "" if r.mid_chs else f"{r.theoretical_ratio:.4f}")
            for r in std.layers
        ]
        rows.append(("total", "", "", "", s.params, std.params, s.macs, std.macs,
                     f"{s.macs / std.macs:.4f}", ""))
        parts.append(_table(
            ["layer", "chs", "k", "stride", "params", "std params", "MACs", "std MACs", "MAC ratio", "1/N+1/K^2"],
            rows, md,
        ))
    return "\n\n".join(parts)


def summary_figure(s: ModelSummary) -> Any:
    """Per separable layer, the multiply-adds and parameters it needs against a standard conv
    in its place (``compare_standard``), on log scales, as a matplotlib figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if s.standard is None:
        raise ValueError("the summary figure needs a summary made with compare_standard=True")
    rows = s.standard.layers
    if not rows:
        raise UsageError(f"{s.model} has no depthwise-separable layers to plot")
    idx = range(len(rows))
    fig, axes = plt.subplots(2, 1, figsize=(max(8, len(rows) * 0.35), 7.5), sharex=True)
    for ax, key, label in ((axes[0], "macs", "multiply-adds per image"), (axes[1], "params", "parameters")):
        ax.bar([i - 0.2 for i in idx], [getattr(r, f"standard_{key}") for r in rows], 0.4, label="standard conv")
        ax.bar([i + 0.2 for i in idx], [getattr(r, key) for r in rows], 0.4, label="depthwise separable")
        ax.set_yscale("log")
        ax.set_ylabel(f"{label} (log scale)")
        ax.legend()
    axes[1].set_xticks(list(idx), [r.name for r in rows], rotation=90, fontsize=7)
    axes[1].set_xlabel("layer")
    macs = sum(r.macs for r in rows) / sum(r.standard_macs for r in rows)
    params = sum(r.params for r in rows) / sum(r.standard_params for r in rows)
    axes[0].set_title(f"{s.model}, input {_shape(s.input_size)}: its {len(rows)} depthwise-separable layers need "
                      f"{macs:.1%} of the multiply-adds\nand {params:.1%} of the parameters of standard convs in "
                      f"their place\n({s.macs / s.standard.macs:.1%} of the MACs for the whole network)", fontsize=9)
    fig.tight_layout()
    return fig


def plot(s: ModelSummary, path: str) -> None:
    """``summary_figure`` written atomically to ``path`` as PNG."""
    try:
        import matplotlib.pyplot as plt

        fig = summary_figure(s)
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install matplotlib") from None
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {item}: VALUE is not valid YAML ({' '.join(str(exc).split())})") from None
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="registered name, config.yaml or config.yaml:variant")
    p.add_argument("--input-size", nargs=3, type=positive_int, metavar=("C", "H", "W"), help="default: the model's")
    p.add_argument("--num-classes", type=non_negative_int)
    p.add_argument("--width-mult", type=positive_float)
    p.add_argument("--in-chans", type=positive_int)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other create_model override, VALUE in YAML syntax (e.g. separable=false)")
    p.add_argument("--depth", type=non_negative_int, default=3, help="torchinfo table depth (default 3)")
    p.add_argument("--format", choices=("table", "markdown", "json"), default="table")
    p.add_argument("--compare-standard", action="store_true", help="compare with standard convs")
    p.add_argument("--list", action="store_true", help="list every registered model")
    p.add_argument("--plot", metavar="PNG", help="bar chart of separable vs standard per layer")
    p.add_argument("--overwrite", action="store_true", help="replace the --plot file if it exists")
    p.add_argument("--allow-large", action="store_true", help="build models above the size guard (dszoo.plan)")
    args = p.parse_args(argv)

    if args.list:
        given = [f"--{k.replace('_', '-')}" for k in ("model", "input_size", "num_classes", "width_mult", "in_chans",
                                                      "set", "compare_standard", "plot", "allow_large")
                 if getattr(args, k)]
        if given:
            raise UsageError(f"--list summarises every registered model; it takes no {', '.join(given)}")
        rows = []
        for name in list_models():  # the closed form, equal to the built model's counts (tests/test_models.py)
            plan = plan_model(get_model_config(name))
            rows.append({"model": name, "input_size": list(plan.input_size), "params": plan.params, "macs": plan.macs,
                         "imagenet_top1": imagenet_top1(name)})
        if args.format == "json":
            print(json.dumps(rows, indent=2))
        else:
            print(_table(["model", "input", "params", "MACs", "ImageNet top-1 (published)"],
                         [(r["model"], _shape(r["input_size"]), r["params"], r["macs"],
                           "-" if r["imagenet_top1"] is None else f"{r['imagenet_top1']:.2f}%") for r in rows],
                         args.format == "markdown"))
        return 0
    if not args.model:
        raise UsageError("give --model NAME (or --list); models: " + ", ".join(list_models()))
    if args.plot:
        new_output_file(args.plot, args.overwrite, "--plot", (".png",))
    overrides = _parse_set(args.set)
    for key in ("num_classes", "width_mult", "in_chans"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    summary = summarize(args.model, args.input_size, depth=args.depth,
                        compare_standard=args.compare_standard or bool(args.plot), allow_large=args.allow_large,
                        **overrides)
    if args.plot:
        plot(summary, args.plot)
    if args.format == "json":
        out = summary.to_dict()
        if not args.compare_standard:
            out.pop("standard")
        print(json.dumps(out, indent=2))
    else:
        print(render(summary, args.format))
    return 0


def cli(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point: user errors as one ``error:`` line and exit code 2."""
    return run_cli(main, argv)
