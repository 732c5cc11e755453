"""Multiply-accumulate counts with ``torch.utils.flop_counter``.

FlopCounterMode counts the FLOPs of matmul-like ops (mm, bmm, addmm, convolution, scaled dot-product
attention, their backward ops); we report MACs = FLOPs / 2, the unit most papers quote. Elementwise ops,
normalisation, softmax, pooling and FFTs are not counted, so ops dominated by those read low.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """MACs of one eval-mode forward pass at ``input_size`` (C, H, W) per ``batch_size`` images."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    sample = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(sample)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
