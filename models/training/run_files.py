"""The files a training run writes: atomic checkpoints, metrics.csv, curves.png, and the
rule that a run's folder is never silently reused."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ..atomic import atomic_path
from ..errors import UsageError
from ..weights import CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "RUN_FILES", "check_out_dir", "curves_figure", "free_run_dir", "load_checkpoint",
           "plot_curves", "save_checkpoint", "write_metrics"]

CHECKPOINT_FORMAT = "dszoo-train-1"
RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "args.json", "curves.png")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str) -> dict[str, Any]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UsageError(f"--resume {path}: no such file") from None
    except Exception as exc:  # corrupt, truncated or unsafe files all end here
        raise CheckpointError(f"--resume {path}: not a readable training checkpoint ({' '.join(str(exc).split())[:160]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"--resume {path}: not a dszoo training checkpoint (use --pretrained for weights)")
    return ckpt


def write_metrics(out: Path, history: list[dict[str, float]]) -> None:
    with atomic_path(out / "metrics.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["epoch", "train_loss", "val_loss", "val_top1", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(history)


def curves_figure(history: list[dict[str, float]]) -> Any:
    """Loss and top-1 per epoch as a matplotlib figure. Losses far above the rest (a spike; a
    point beyond the upper quartile plus three interquartile ranges) are drawn at the top edge
    as triangles labelled with their value, so they do not squash the curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    losses = {"train loss": [h["train_loss"] for h in history], "val loss": [h["val_loss"] for h in history]}
    finite = sorted(v for vals in losses.values() for v in vals if math.isfinite(v))
    top = None
    if len(finite) >= 4:
        q1, q3 = finite[len(finite) // 4], finite[(3 * len(finite)) // 4]
        fence = q3 + 3 * (q3 - q1)
        if finite[-1] > fence > 0:
            top = fence * 1.05
    for label, vals in losses.items():
        line, = ax1.plot(epochs, [v if top is None or v <= top else float("nan") for v in vals], marker="o", label=label)
        for e, v in zip(epochs, vals):
            if top is not None and not v <= top:
                ax1.plot([e], [top], marker="^", color=line.get_color(), clip_on=False)
                ax1.annotate(f"{v:.3g}", (e, top), textcoords="offset points", xytext=(0, -12), ha="center",
                             fontsize=7, color=line.get_color())
    if top is not None:
        ax1.set_ylim(top=top)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("cross-entropy loss" + (" (triangles: off the scale)" if top is not None else ""))
    ax1.set_title("loss per epoch")
    ax1.legend()
    ax2.plot(epochs, [h["val_top1"] for h in history], marker="o", color="tab:green")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("validation top-1 accuracy (%)")
    ax2.set_title("validation accuracy per epoch")
    fig.tight_layout()
    return fig


def plot_curves(out: Path, history: list[dict[str, float]]) -> None:
    """``curves_figure`` written atomically to ``out/curves.png``."""
    try:
        import matplotlib.pyplot as plt

        fig = curves_figure(history)
    except ImportError:
        print("note: matplotlib is not installed, so no curves.png (pip install matplotlib)")
        return
    with atomic_path(out / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def free_run_dir(root: Path, stem: str, world: int) -> Path:
    """``root/stem``, else ``root/stem2``, ``stem3`` ...: the first without run files.

    With several processes every rank must pick the same folder, so rank 0 chooses.
    """
    choice = [""]
    if not dist.is_initialized() or dist.get_rank() == 0:
        n = 1
        while any((root / f"{stem}{n if n > 1 else ''}" / f).exists() for f in RUN_FILES):
            n += 1
        choice[0] = str(root / f"{stem}{n if n > 1 else ''}")
    if world > 1 and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return Path(choice[0])


def check_out_dir(cfg: Any, out: Path) -> None:
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out-dir {out}: {folder} is a file, not a folder")
    existing = [f for f in RUN_FILES if (out / f).exists()]
    if existing and not cfg.resume and not cfg.overwrite:
        raise UsageError(f"{out} holds another run ({', '.join(existing)}); pass --resume {out / 'last.pt'} "
                         "or --overwrite, or choose another --out-dir")
