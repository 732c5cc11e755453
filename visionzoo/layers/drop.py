"""Stochastic depth. timm's DropPath is the reference everyone trains with; the zoo uses it unchanged."""
from __future__ import annotations

import torch
from timm.layers import DropPath, drop_path

__all__ = ["DropPath", "drop_path", "drop_path_rates"]


def drop_path_rates(drop_path_rate: float, count: int) -> list[float]:
    """``count`` rates rising linearly from 0 to ``drop_path_rate``, one per block.

    Computed on the CPU whatever the default device is: a model built under ``torch.device('meta')`` (deferred
    initialisation) still needs the rates as Python numbers, and a meta tensor has none to give.
    """
    return torch.linspace(0, drop_path_rate, count, device="cpu").tolist()
