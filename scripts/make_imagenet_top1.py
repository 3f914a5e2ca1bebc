#!/usr/bin/env python
"""Write ``configs/imagenet_top1.csv``: the published ImageNet-1k top-1 of each registered model's
weights, for the benchmark's latency-against-accuracy plot. For maintainers; nothing is fetched.

    python scripts/make_imagenet_top1.py PATH/TO/timm/results/results-imagenet.csv

A model with a timm twin takes timm's evaluation of the twin's default weights (its pretrained
tag in the installed timm) at the model's own input size, else at the size the weights were
trained at (the source column says which), from timm's results table; one without
(or whose timm twin has no weights) takes torchvision's weights metadata (``acc@1``) of its
torchvision twin. A model neither publishes weights for gets no row.
"""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import hubconf  # noqa: E402,F401  (imports dszoo from this checkout)
from dszoo import get_model_config, list_models  # noqa: E402
from dszoo.errors import UsageError  # noqa: E402
from dszoo.files import FileKindError, atomic_path, regular_file  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "configs" / "imagenet_top1.csv"


def timm_top1(results: dict[tuple[str, int], str], timm_name: str, size: int) -> tuple[str, str] | None:
    """timm's top-1 of ``timm_name``'s default weights at ``size`` (else at their own input
    size), and where it comes from."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name)
    if cfg is None or cfg.tag in (None, "untrained"):
        return None
    for key in ((f"{timm_name}.{cfg.tag}", size), (f"{timm_name}.{cfg.tag}", cfg.input_size[1])):
        if key in results:
            return results[key], f"timm results-imagenet.csv {key[0]} at {key[1]}"
    return None


def torchvision_top1(name: str) -> tuple[str, str] | None:
    """torchvision's published top-1 of its default weights for ``name``."""
    import torchvision

    weights = torchvision.models.get_model_weights(name).DEFAULT
    return f"{weights.meta['_metrics']['ImageNet-1K']['acc@1']:.3f}", f"torchvision {weights}"


def read_results(results_csv: str) -> dict[tuple[str, int], str]:
    """timm's results table: (model.tag, image size) -> top-1 (``UsageError`` naming the problem)."""
    path = regular_file(results_csv, "timm results table", max_bytes=100_000_000)  # a FIFO is not opened
    try:
        with open(path, newline="") as f:
            return {(row["model"], int(row["img_size"])): row["top1"] for row in csv.DictReader(f)}
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UsageError(f"{results_csv}: cannot read it ({e})") from None
    except (KeyError, TypeError, ValueError):
        raise UsageError(f"{results_csv}: not timm's results-imagenet.csv (columns model, img_size, top1)") from None


def main(results_csv: str) -> int:
    results = read_results(results_csv)
    rows = []
    for name in list_models():
        cfg = get_model_config(name)
        found = (timm_top1(results, cfg.timm_name, cfg.input_size[1]) if cfg.timm_name else None) or \
            (torchvision_top1(cfg.torchvision_name) if cfg.torchvision_name else None)
        if found:
            rows.append({"model": name, "top1": found[0], "source": found[1]})
    with atomic_path(OUT) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, ["model", "top1", "source"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{OUT}: {len(rows)} of {len(list_models())} models")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} results-imagenet.csv", file=sys.stderr)
        sys.exit(2)
    try:
        sys.exit(main(sys.argv[1]))
    except (UsageError, FileKindError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
