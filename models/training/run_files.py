"""The files a training run writes: atomic checkpoints, metrics.csv, curves.png, and the
rule that a run's folder is never silently reused."""
from __future__ import annotations

import csv
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.distributed as dist

from ..files import FileKindError, atomic_path, regular_file, write_through_memory
from ..errors import UsageError
from ..checkpoints import CHECKPOINT_FORMAT, read_checkpoint, read_training_checkpoint

__all__ = ["CHECKPOINT_FORMAT", "LOCK_FILE", "RUN_FILES", "RUN_RESULTS", "RunFolderBusy", "acquire_run_lock",
           "check_out_dir", "confusion_figure", "curves_figure", "folder_in_use", "free_run_dir", "read_checkpoint",
           "read_training_checkpoint",
           "plot_confusion", "plot_curves", "release_run_lock", "save_checkpoint", "write_metrics"]

RUN_FILES = ("last.pt", "best.pt", "metrics.csv", "args.json", "curves.png", "confusion.png", "int8.pt2")
"""Every file a run writes (``--overwrite`` replaces them all)."""
RUN_RESULTS = ("last.pt", "best.pt", "metrics.csv")
"""The files that make a folder hold a run: what training produced."""


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """``payload`` written atomically, every tensor in it on the CPU (a checkpoint of a GPU run
    loads on any machine; resuming puts the model's and optimizer's state back on the device)."""
    on_cpu = _on_cpu(payload)
    with atomic_path(path) as tmp:
        write_through_memory(tmp, lambda fh: torch.save(on_cpu, fh))


def _on_cpu(obj: Any) -> Any:
    """``obj`` with every tensor in its dicts, lists and tuples moved to the CPU. A state dict's
    ``_metadata`` (each module's version, which quantization observers and BatchNorm read when
    loading) is kept."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((k, _on_cpu(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata  # type: ignore[attr-defined]
        return out
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):
        return type(obj)(_on_cpu(v) for v in obj)
    return obj


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
    from matplotlib.ticker import MaxNLocator

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
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
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


LOCK_FILE = ".dszoo-run.lock"
"""Held by the one process that writes a run folder: its pid and host, one line."""


class RunFolderBusy(UsageError):
    """Another live process holds the run folder's lock."""


def _lock_owner(lock: Path) -> Optional[tuple[int, str]]:
    try:
        pid, host = lock.read_text().split()[:2]
        return int(pid), host
    except (OSError, ValueError):
        return None  # vanished, or a lock being written this instant / damaged


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def folder_in_use(folder: Path) -> bool:
    """Whether a live process on this host (or any process on another host) holds ``folder``'s lock."""
    owner = _lock_owner(folder / LOCK_FILE)
    return owner is not None and (owner[1] != socket.gethostname() or _alive(owner[0]))


def acquire_run_lock(folder: Path, note: Callable[[str], None] = print, kind: str = "training",
                     option: str = "--out-dir") -> Path:
    """Make this process the one that writes ``folder``: create its lock file atomically
    (``O_CREAT | O_EXCL``) with our pid and host. A lock left by a process that is gone is
    reported through ``note`` and taken over; one held by a live process (or by one on another
    host, which cannot be checked) raises ``RunFolderBusy`` naming it a ``kind`` process (and the
    command's ``option`` for another folder). Returns the lock's path."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(lock)
            if owner is None:
                time.sleep(0.05)  # its owner is writing it now
                owner = _lock_owner(lock)
            if owner is not None and owner[1] != socket.gethostname():
                raise RunFolderBusy(f"{folder} is locked by process {owner[0]} on host {owner[1]}; if that run has "
                                    f"ended, delete {lock}") from None
            if owner is not None and _alive(owner[0]):
                raise RunFolderBusy(f"{folder} is in use by another {kind} process (pid {owner[0]}); wait for it "
                                    f"to finish or choose another {option}") from None
            note(f"note: {folder}: removed the lock of process {owner[0] if owner else '?'}, which is no longer "
                 "running (a run that was killed)")
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{os.getpid()} {socket.gethostname()}\n")
        return lock
    raise RunFolderBusy(f"{folder}: could not take its lock ({lock}); another process keeps creating it")


def release_run_lock(lock: Path) -> None:
    """Remove ``lock`` if this process still holds it."""
    owner = _lock_owner(lock)
    if owner is not None and owner[0] == os.getpid():
        lock.unlink(missing_ok=True)


def confusion_figure(confusion: torch.Tensor, names: list[str], title: str) -> Any:
    """A confusion matrix (rows: true class, columns: predicted) as a matplotlib figure, each
    cell with its count, coloured by the share of its row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n.replace("$", r"\$") for n in names]  # a folder named $x$ is a label, not mathtext
    n = len(names)
    share = confusion.float() / confusion.sum(1, keepdim=True).clamp(min=1)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * n + 2), max(4.5, 0.45 * n + 1.5)))
    image = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), names, rotation=90, fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                ax.text(j, i, str(int(confusion[i, j])), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, label="share of the true class's clips")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def plot_confusion(out: Path, confusion: torch.Tensor, names: list[str], title: str) -> None:
    """``confusion_figure`` written atomically to ``out/confusion.png``."""
    try:
        import matplotlib.pyplot as plt

        fig = confusion_figure(confusion, names, title)
    except ImportError:
        return
    with atomic_path(out / "confusion.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


def free_run_dir(root: Path, stem: str, world: int) -> Path:
    """``root/stem``, else ``root/stem2``, ``stem3`` ...: the first that holds no file a run would
    replace and that no live process has locked.

    With several processes every rank must pick the same folder, so rank 0 chooses.
    """
    choice = [""]
    if not dist.is_initialized() or dist.get_rank() == 0:
        n = 1
        while True:
            folder = root / f"{stem}{n if n > 1 else ''}"
            if not files_a_run_would_replace(folder) and not folder_in_use(folder):
                break
            n += 1
        choice[0] = str(folder)
    if world > 1 and dist.is_initialized():
        dist.broadcast_object_list(choice, src=0)
    return Path(choice[0])


def _written_by_a_run(path: Path) -> bool:
    """Whether ``path`` is the ``args.json`` a ``dszoo-train`` run wrote (its options, with the
    ``world_size`` and ``dataset_info`` it adds), not a file of the user's by that name."""
    import json

    try:
        about = json.loads(Path(regular_file(path, "args.json")).read_text())
    except (OSError, ValueError, RecursionError, FileKindError):
        return False
    return isinstance(about, dict) and {"model", "dataset", "world_size", "dataset_info"} <= about.keys()


def files_a_run_would_replace(folder: Path) -> list[str]:
    """The ``RUN_FILES`` in ``folder`` that a new run there would replace: all of them but the
    ``args.json`` of a run that stopped before its first epoch."""
    return [f for f in RUN_FILES if (folder / f).exists() and not (f == "args.json" and _written_by_a_run(folder / f))]


def check_out_dir(cfg: Any, out: Path) -> None:
    """Refuse, before anything is written, an ``--out-dir`` that is not a folder, that holds
    another run (its checkpoints or metrics), or that holds any other file a run writes
    (``RUN_FILES``: a user's own ``args.json``, ``curves.png``, ``int8.pt2`` ...), unless resuming
    or overwriting it. A folder that holds only the ``args.json`` of a run that stopped before
    its first epoch holds no run."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--out-dir {out}: {folder} is a file, not a folder")
    if cfg.resume or cfg.overwrite:
        return
    taken = files_a_run_would_replace(out)
    existing = [f for f in taken if f in RUN_RESULTS]
    if existing:
        raise UsageError(f"{out} holds another run ({', '.join(existing)}); pass --resume {out / 'last.pt'} "
                         "or --overwrite, or choose another --out-dir")
    others = [f for f in taken if f not in RUN_RESULTS]
    if others:
        raise UsageError(f"{out} holds {', '.join(others)}, which a run there would replace; pass --overwrite to "
                         "replace them, or choose another --out-dir")
