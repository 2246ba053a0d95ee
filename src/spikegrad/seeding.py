"""Seeding every global random generator, for reproducible runs."""

from __future__ import annotations

import random

import numpy as np
import torch

__all__ = ["seed_everything"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Call it before creating a model to make its initial weights depend on ``seed`` alone;
    :class:`spikegrad.Trainer` does so itself when given a model factory instead of a model.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
