"""Datasets for fine-tuning: scikit-learn's bundled digits, ImageFolder, CIFAR-10, FakeData.

Images go through the model's ``pretrained_cfg`` (timm's ``create_transform``) unless the
dataset needs its own (the 8x8 digits are resized once, as tensors). Nothing is downloaded.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from ..errors import UsageError
from ..files import regular_file

__all__ = ["DATASETS", "DataSplits", "build_datasets", "calibration_examples"]

DATASETS = ("digits", "imagefolder", "cifar10", "fake", "speech_commands")


@dataclass
class DataSplits:
    """Train and validation sets and their class count; a held-out test set where the dataset has
    one (speech commands), and the class names, which checkpoints keep (every dataset but FakeData)."""

    train: Dataset
    val: Dataset
    num_classes: int
    description: str
    test: Optional[Dataset] = None
    class_names: Optional[list[str]] = None


def _digits(input_size: Sequence[int], classes: Optional[Sequence[int]], mean: Sequence[float], std: Sequence[float]) -> DataSplits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32) / 16.0  # 1797 x 8 x 8 in [0, 1]
    labels = torch.tensor(data.target, dtype=torch.long)
    if classes:
        bad = [c for c in classes if not 0 <= c <= 9]
        if bad:
            raise UsageError(f"--classes for digits must be in 0..9, got {bad}")
        keep = torch.isin(labels, torch.tensor(list(classes)))
        images, labels = images[keep], labels[keep]
        remap = {c: i for i, c in enumerate(classes)}
        labels = torch.tensor([remap[int(v)] for v in labels])
    c, h, w = input_size
    x = F.interpolate(images[:, None], size=(h, w), mode="bilinear", align_corners=False).expand(-1, c, -1, -1)
    x = (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)
    # A fixed stratified split: the same 20% validation digits on every machine and run.
    train_idx, val_idx = train_test_split(
        range(len(labels)), test_size=0.2, stratify=labels.numpy(), random_state=0,
    )
    num_classes = len(classes) if classes else 10
    return DataSplits(
        TensorDataset(x[train_idx].contiguous(), labels[train_idx]),
        TensorDataset(x[val_idx].contiguous(), labels[val_idx]),
        num_classes,
        f"digits ({len(train_idx)} train / {len(val_idx)} val, {num_classes} classes)",
        class_names=[str(c) for c in (classes or range(10))],
    )


def _walk_once(root: str) -> Iterator[str]:
    """Every file under ``root``, following symbolic links but entering each real folder once
    (a link back up the tree would make ``os.walk`` loop until the path is too long)."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        yield from (os.path.join(folder, name) for name in sorted(files))


def _read_image(path: str) -> Any:
    """PIL's RGB image of ``path`` as a viewer shows it (``_as_rgb``); a file that is not a
    readable image, or not a regular file (a FIFO would hang the read), is a ``UsageError``
    naming it."""
    from PIL import Image

    try:
        regular_file(path, "image")
        with open(path, "rb") as fh:
            return _as_rgb(Image.open(fh), path)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UsageError(f"{path}: not a readable image ({' '.join(str(exc).split())[:160]}); remove or replace "
                         "it") from None


def _as_rgb(image: Any, path: str) -> Any:
    """``image`` as 8-bit RGB, turned upright by its EXIF orientation (a phone's photo is stored
    sideways with a tag saying so). PIL's own conversion clips 16-bit and 32-bit grey to 255 (a
    16-bit PNG comes out white); here 16-bit is scaled to 8 bits, 32-bit integer grey is taken
    as it is when it lies in 0-255, and floating-point grey, whose range no file states, is
    refused, as is other 32-bit grey."""
    import numpy as np
    from PIL import Image, ImageOps

    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I;16"):
        grey = np.asarray(image, dtype=np.uint16) >> 8
        return Image.fromarray(grey.astype(np.uint8), "L").convert("RGB")
    if image.mode == "F":
        raise UsageError(f"{path}: a floating-point grey image, whose range (0-1? 0-255?) is not known; save it as an "
                         "8- or 16-bit image")
    if image.mode == "I":
        values = np.asarray(image)
        low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
        if not 0 <= low <= high <= 255:
            raise UsageError(f"{path}: a 32-bit grey image with values from {low} to {high}, whose range is not known; "
                             "save it as an 8- or 16-bit image")
        return Image.fromarray(values.astype(np.uint8), "L").convert("RGB")
    return image.convert("RGB")


def _image_folder(root: Path, transform: Any) -> Any:
    """torchvision's ``ImageFolder`` that reads each image once, under the class whose folder
    really holds it (symbolic links and loops included), and names any unreadable image."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    class OnceImageFolder(ImageFolder):
        @staticmethod
        def make_dataset(directory: Any, class_to_idx: dict[str, int], extensions: Any = None,
                         is_valid_file: Any = None, allow_empty: bool = False) -> list[tuple[str, int]]:
            homes = {os.path.realpath(os.path.join(directory, c)): i for c, i in class_to_idx.items()}
            owner: dict[str, tuple[str, int]] = {}
            for name, index in sorted(class_to_idx.items()):
                for path in _walk_once(os.path.join(directory, name)):
                    if not has_file_allowed_extension(path, IMG_EXTENSIONS):
                        continue
                    real = os.path.realpath(path)
                    home = next((i for folder, i in homes.items() if real.startswith(folder + os.sep)), index)
                    if real not in owner or (home == index and owner[real][1] != home):
                        owner[real] = (path, home)
            samples = sorted(owner.values())
            empty = set(class_to_idx.values()) - {i for _, i in samples}
            if empty and not allow_empty:
                names = sorted(c for c, i in class_to_idx.items() if i in empty)
                raise UsageError(f"{directory}: no images for the classes {', '.join(names)} (allowed endings: "
                                 f"{', '.join(IMG_EXTENSIONS)})")
            return samples

    return OnceImageFolder(str(root), transform, loader=_read_image)


IMAGE_AUGMENT: dict[str, dict[str, Any]] = {
    "none": {},
    "light": {"scale": (0.5, 1.0), "hflip": 0.5, "color_jitter": 0.0},
    "imagenet": {"scale": (0.08, 1.0), "hflip": 0.5, "color_jitter": 0.4},
}
"""Training augmentation of image datasets, in timm's ``create_transform`` terms: ``none`` is
the evaluation transform (resize, centre crop); ``light`` a random-resized crop of at least half
the image and flips; ``imagenet`` timm's ImageNet recipe (crops down to 8% of the image, flips,
colour jitter). Small or centred images (digits written as files, product photos) train better
with ``light`` or ``none``."""


@dataclass(frozen=True)
class ImageAugment:
    """An ``IMAGE_AUGMENT`` preset, with its crop ``scale`` range and ``hflip`` probability
    overridable (``dszoo-train --image-augment --scale --hflip``)."""

    preset: str = "imagenet"
    scale: Optional[tuple[float, float]] = None
    hflip: Optional[float] = None

    def create_transform_args(self) -> dict[str, Any]:
        if self.preset not in IMAGE_AUGMENT:
            raise UsageError(f"--image-augment {self.preset!r}; allowed: {', '.join(IMAGE_AUGMENT)}")
        if self.preset == "none":
            return {"is_training": False}
        args = dict(IMAGE_AUGMENT[self.preset], is_training=True)
        if self.scale is not None:
            args["scale"] = tuple(self.scale)
        if self.hflip is not None:
            args["hflip"] = self.hflip
        return args


def _transforms(pretrained_cfg: dict[str, Any], in_chans: int, training: bool,
                augment: ImageAugment = ImageAugment()) -> Any:
    from timm.data import create_transform
    from torchvision import transforms as T

    c, h, w = pretrained_cfg["input_size"]
    tf = create_transform(
        input_size=(c, h, w), interpolation=pretrained_cfg["interpolation"], mean=pretrained_cfg["mean"],
        std=pretrained_cfg["std"], crop_pct=pretrained_cfg["crop_pct"],
        **(augment.create_transform_args() if training else {"is_training": False}),
    )
    if in_chans == 1:  # grayscale models read RGB files as one channel
        return T.Compose([T.Grayscale(num_output_channels=1), tf])
    return tf


def build_datasets(
    name: str,
    pretrained_cfg: dict[str, Any],
    *,
    data_dir: Optional[str] = None,
    classes: Optional[Sequence[int]] = None,
    fake_size: int = 64,
    num_classes: Optional[int] = None,
    speech_task: str = "12",
    augment: str = "basic",
    hold_out_engine: Optional[str] = None,
    unknown_ratio: float = 0.125,
    mfcc: str = "mlperf_tiny",
    image_augment: ImageAugment = ImageAugment(),
    flag: str = "--dataset",
    seed: int = 0,
) -> DataSplits:
    """Train/val datasets for ``name`` shaped for a model with this ``pretrained_cfg``; ``seed``
    draws speech data's unknown-word subsets, silence clips and augmentation (``--seed``).

    ``num_classes`` sets the class count of ``fake`` (default 10); the other datasets have
    their own, which the caller checks it against."""
    input_size = pretrained_cfg["input_size"]
    if name == "digits":
        return _digits(input_size, classes, pretrained_cfg["mean"], pretrained_cfg["std"])
    if name == "speech_commands":
        if not data_dir:
            raise UsageError(f"{flag} speech_commands needs --data-dir DIR (the real dataset, or one made by "
                             "dszoo-make-speech-data)")
        if tuple(input_size) != (1, 49, 10):
            raise UsageError(f"{flag} speech_commands gives 1x49x10 MFCC features; this model takes "
                             f"{'x'.join(map(str, input_size))} (use a ds_cnn model)")
        from ..audio.augment import parse_levers
        from ..audio.speech_commands import build_speech_commands

        speech = build_speech_commands(data_dir, task=speech_task, preset=mfcc, seed=seed, augment=parse_levers(augment),
                                       hold_out_engine=hold_out_engine, unknown_ratio=unknown_ratio)
        return DataSplits(speech.train, speech.val, len(speech.classes), speech.description, speech.test,
                          speech.classes)
    if classes:
        raise UsageError(f"--classes is only supported for {flag} digits")
    if input_size[0] not in (1, 3):
        raise UsageError(f"--in-chans {input_size[0]}: {flag} {name} gives RGB images (3 channels), or grey ones "
                         "for --in-chans 1; allowed: 1, 3")
    train_tf = _transforms(pretrained_cfg, input_size[0], True, image_augment)
    val_tf = _transforms(pretrained_cfg, input_size[0], False)
    if name == "fake":
        from torchvision.datasets import FakeData

        size = (3, *input_size[1:])
        classes_n = num_classes or 10
        return DataSplits(
            FakeData(fake_size, size, classes_n, train_tf, random_offset=0),
            FakeData(max(fake_size // 4, 8), size, classes_n, val_tf, random_offset=10_000),
            classes_n, f"FakeData ({fake_size} train images, {classes_n} classes)",
        )
    if name not in ("imagefolder", "cifar10"):
        raise UsageError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}")
    if not data_dir:
        raise UsageError(f"{flag} {name} needs --data-dir DIR")
    root = Path(data_dir)
    if not root.is_dir():
        raise UsageError(f"--data-dir {root}: no such directory")
    if name == "imagefolder":
        missing = [d for d in ("train", "val") if not (root / d).is_dir()]
        if missing:
            raise UsageError(f"--data-dir {root}: ImageFolder needs {' and '.join(f'{d}/' for d in missing)} inside")
        train, val = _image_folder(root / "train", train_tf), _image_folder(root / "val", val_tf)
        if train.classes != val.classes:
            raise UsageError(f"{root}: train/ has classes {train.classes} but val/ has {val.classes}")
        return DataSplits(train, val, len(train.classes), f"ImageFolder {root} ({len(train)} / {len(val)})",
                          class_names=list(train.classes))
    from torchvision.datasets import CIFAR10

    try:
        train = CIFAR10(str(root), train=True, transform=train_tf, download=False)
        val = CIFAR10(str(root), train=False, transform=val_tf, download=False)
    except RuntimeError as exc:
        raise UsageError(f"--data-dir {root}: {exc} (expected cifar-10-batches-py/ inside; nothing is downloaded)") from None
    return DataSplits(train, val, 10, f"CIFAR-10 {root}", class_names=list(train.classes))


def calibration_examples(dataset: Dataset, count: int, batch_size: int = 64) -> list[torch.Tensor]:
    """The inputs of the first ``count`` examples of ``dataset`` (in its order, through its own
    transforms), in batches of ``batch_size``: the calibration data of an int8 model."""
    from torch.utils.data import DataLoader

    batches, seen = [], 0
    for x, _ in DataLoader(dataset, batch_size=min(batch_size, count), shuffle=False):
        batches.append(x[: count - seen])
        seen += len(batches[-1])
        if seen >= count:
            break
    return batches
