"""Multiply-accumulate counts with ``torch.utils.flop_counter``.

FlopCounterMode counts the FLOPs of matmul-like ops (mm, bmm, addmm, baddbmm, convolution, scaled dot-product
attention, flex attention, and their backward ops); we report MACs = FLOPs / 2, the unit most papers quote.
Elementwise ops, normalisation, softmax, pooling and FFTs are not counted, so ops dominated by those read low.
``FORMULA_FIXES`` completes torch's table: the in-place ``baddbmm_``, which torch leaves out (HaloNet's fast path
accumulates its content logits with it and read about 15% low); SDPA's CPU kernel
(``_scaled_dot_product_flash_attention_for_cpu``, what ``F.scaled_dot_product_attention`` runs on the CPU, and its
backward) counted like the GPU kernels; torchvision's
deformable convolution, counted like the plain conv of its weight (one MAC per weight use per output position; the
bilinear sampling and its backward are not counted); and the weight gradient of a grouped convolution, which
torch prices as a dense one.

FFTs are counted apart (:func:`count_fft_macs`), never inside :func:`count_macs`: an N-point real transform (rFFT
or its inverse, over all its transformed axes together) costs 2.5·N·log2(N) real FLOPs, the classic radix-2
count (half of a complex transform's 5·N·log2(N)), so 1.25·N·log2(N) MACs in our FLOPs / 2 convention. Efficiency
figures turn MACs back into FLOPs by doubling, so the FFT's share of an efficiency is its real operation count.
Spectral filters (SpectFormer) cost these FFT MACs plus an elementwise complex product, which like every
elementwise op is not counted.
"""
from __future__ import annotations

import copy
import math

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision, whose deform_conv2d we count)
from torch import nn
from torch.utils import flop_counter
from torch.utils.flop_counter import FlopCounterMode

FLOP_COUNTER_NOTE = (
    "torch.utils.flop_counter counts matmul, conv and scaled-dot-product/flex attention (forward and backward) and "
    "deformable convs (forward, as plain convs); elementwise ops, norms, softmax and pooling are not counted. FFTs "
    "are counted apart (FFT GMACs: 1.25·N·log2(N) MACs per N-point real transform) and added to the inference "
    "efficiency, not to GMACs. "
    "The benchmark counts each op's reference implementation, the model's math, not the extra work of a fast path."
)

_aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)


def _cpu_sdpa_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return flop_counter.sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _baddbmm_flops(self_shape, batch1_shape, batch2_shape, *args, out_shape=None, **kwargs) -> int:
    batch, rows, inner = batch1_shape
    return 2 * batch * rows * inner * batch2_shape[-1]


def _deform_conv2d_flops(input_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    _, in_chs_per_group, kernel_h, kernel_w = weight_shape
    output_elements = 1
    for size in out_shape:
        output_elements *= size
    return 2 * output_elements * in_chs_per_group * kernel_h * kernel_w


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    # The input gradient and the weight gradient each cost what the forward convolution costs. torch's own formula
    # prices the weight gradient as if the convolution were dense, `groups` times too high for depthwise convs.
    forward = flop_counter.conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _points(shape, dims) -> int:
    return math.prod(shape[d] for d in dims)


def _real_fft_flops(points: int, transforms: int) -> int:
    return int(round(2.5 * points * math.log2(points) * transforms)) if points > 1 else 0


def _fft_r2c_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    points = _points(input_shape, dim)
    return _real_fft_flops(points, math.prod(input_shape) // points)


def _fft_c2r_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    points = _points(out_shape, dim)
    return _real_fft_flops(points, math.prod(out_shape) // points)


def _fft_c2c_flops(input_shape, dim, *args, out_shape=None, **kwargs) -> int:
    points = _points(input_shape, dim)
    return 2 * _real_fft_flops(points, math.prod(input_shape) // points)


FFT_FORMULAS = {
    _aten._fft_r2c: _fft_r2c_flops,
    _aten._fft_c2r: _fft_c2r_flops,
    _aten._fft_c2c: _fft_c2c_flops,
}

# Passed to every FlopCounterMode here, on top of torch's registry.
FORMULA_FIXES = {
    _aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops,
    _aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flops,
    _aten.convolution_backward: _conv_backward_flops,
    _aten.baddbmm_: _baddbmm_flops,
    torch.ops.torchvision.deform_conv2d: _deform_conv2d_flops,
}


def flop_counter_mode() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=FORMULA_FIXES)


def _sample_like(model: nn.Module, input_size: tuple[int, int, int], batch_size: int) -> torch.Tensor:
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    return torch.randn(batch_size, *input_size, device=device, dtype=dtype)


def surrogate_loss(output) -> torch.Tensor:
    """A scalar that depends on every tensor a model returns (some return a tuple in train mode)."""
    tensors = output if isinstance(output, (tuple, list)) else (output,)
    return sum(t.float().mean() for t in tensors if isinstance(t, torch.Tensor))


def count_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """MACs of one eval-mode forward pass at ``input_size`` (C, H, W) per ``batch_size`` images."""
    sample = _sample_like(model, input_size, batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), flop_counter_mode() as counter:
            model(sample)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def count_fft_macs(model: nn.Module, input_size: tuple[int, int, int], batch_size: int = 1) -> int:
    """MACs of the FFTs in one eval-mode forward pass (1.25·N·log2(N) per N-point real transform; see the module
    docstring); zero for a model without FFTs. Run it under ``use_backend('reference')`` to count the FFTs of ops
    whose fast path replaces them by matmuls."""
    sample = _sample_like(model, input_size, batch_size)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=FFT_FORMULAS) as counter:
            model(sample)
    finally:
        model.train(was_training)
    by_op = counter.get_flop_counts().get("Global", {})
    return sum(by_op.get(op, 0) for op in (*FFT_FORMULAS, *(o.default for o in FFT_FORMULAS))) // 2


def count_train_macs(model: nn.Module, input_size: tuple[int, int, int]) -> int:
    """MACs of one training step's forward + backward per image (the optimizer's elementwise update is free).

    Runs on a copy in train mode at batch 2 (batch norm needs more than one value per channel) and halves the count.
    """
    trainee = copy.deepcopy(model).train()
    sample = _sample_like(trainee, input_size, batch_size=2)
    with flop_counter_mode() as counter:
        surrogate_loss(trainee(sample)).backward()
    return counter.get_total_flops() // 4


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
