"""Shared helpers: a small input each registered model accepts."""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


def small_input_size(cfg) -> tuple[int, int, int]:
    """The smallest cheap input for a model: 64x64 images, the native size for audio models."""
    c, h, w = cfg.input_size
    min_h, min_w = cfg.min_input_size or (1, 1)
    if h * w <= 64 * 64:
        return c, h, w
    return c, max(64, min_h), max(64, min_w)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
