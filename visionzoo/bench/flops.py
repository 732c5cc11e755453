"""Multiply-accumulate counts with ``torch.utils.flop_counter``.

FlopCounterMode counts the FLOPs of matmul-like ops (mm, bmm, addmm, convolution, scaled dot-product
attention, their backward ops); we report MACs = FLOPs / 2, the unit most papers quote. Elementwise ops,
normalisation, softmax, pooling and FFTs are not counted, so ops dominated by those read low.
Two ops that torch's table lacks are added: SDPA's CPU kernel (``_scaled_dot_product_flash_attention_for_cpu``,
what ``F.scaled_dot_product_attention`` runs on the CPU) counted like the GPU kernels, and torchvision's
deformable convolution, counted like the plain conv of its weight (one MAC per weight use per output
position; the bilinear sampling is not counted).
"""
from __future__ import annotations

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision, whose deform_conv2d we count)
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _deform_conv2d_flops(input_shape, weight_shape, *args, out_shape, **kwargs) -> int:
    _, in_chs_per_group, kernel_h, kernel_w = weight_shape
    output_elements = 1
    for size in out_shape:
        output_elements *= size
    return 2 * output_elements * in_chs_per_group * kernel_h * kernel_w


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


EXTRA_FLOP_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    torch.ops.torchvision.deform_conv2d: _deform_conv2d_flops,
}


def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """MACs of one eval-mode forward pass at ``input_size`` (C, H, W) per ``batch_size`` images."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    sample = torch.randn(batch_size, *input_size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            model(sample)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
