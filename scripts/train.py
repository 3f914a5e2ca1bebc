#!/usr/bin/env python
"""Fine-tune a dszoo model (see ``--help``; the logic lives in ``models/training.py``).

    python scripts/train.py                                  # mobilenet_v1_025 on bundled digits
    python scripts/train.py --model xception --pretrained x.safetensors --dataset imagefolder --data-dir DIR
    torchrun --nproc_per_node=2 scripts/train.py --epochs 5  # DistributedDataParallel
"""
import sys

from models.cli import run_cli
from models.training import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
