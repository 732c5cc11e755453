"""A guard for training in bf16 on the CPU: strided convs with a single output position run unstrided.

oneDNN's bf16 weight-gradient kernel (``jit_bf16:avx512_core_bf16`` in torch 2.14's oneDNN 3.12, picked on CPUs
with AVX512-BF16) leaves taps of the weight gradient unwritten for some convs whose stride exceeds 1 along an
axis with a single output column, in channels-last and (for dense convs) contiguous layouts alike. A 3×3
stride-2 conv on a 1×1 map is one: SHViT's last patch merging on 32 px inputs. The unwritten taps keep whatever
the memory held before, so the gradient is usually right, sometimes huge, and sometimes NaN, which the next
optimizer step spreads into the weights.

Along an axis with one output position the stride changes nothing (the only window starts at ``-padding``
either way), so :class:`UnstridedSingleOutputConv` runs such convs with stride 1 there and keeps the first
position: the same numbers, from the kernel oneDNN computes correctly, at the cost of a few extra output
positions on maps that are already tiny. Every other conv is left to oneDNN as it is.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

_CONV2D_PARAMETERS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


class UnstridedSingleOutputConv(TorchFunctionMode):
    """Inside ``with UnstridedSingleOutputConv():`` a ``conv2d`` whose output has one position along a strided
    axis runs with stride 1 along that axis and is cut to that position (see the module docstring for why)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.conv2d:
            return func(*args, **kwargs)
        call = {"stride": 1, "padding": 0, "dilation": 1, **dict(zip(_CONV2D_PARAMETERS, args)), **kwargs}
        padding = call["padding"]
        if isinstance(padding, str):  # 'same' allows no stride; 'valid' pads nothing
            if padding == "same":
                return func(**call)
            padding = 0
        stride, padding, dilation = _pair(call["stride"]), _pair(padding), _pair(call["dilation"])
        sizes, kernel = call["input"].shape[-2:], call["weight"].shape[-2:]
        single = [
            stride[axis] > 1 and _output_size(sizes[axis], kernel[axis], stride[axis], padding[axis], dilation[axis]) == 1
            for axis in range(2)
        ]
        if not any(single):
            return func(**call)
        call["stride"] = tuple(1 if single[axis] else stride[axis] for axis in range(2))
        out = func(**call)
        layout = torch.contiguous_format if out.dim() != 4 or out.is_contiguous() else torch.channels_last
        for axis in range(2):
            if single[axis]:
                out = out.narrow(axis - 2, 0, 1)
        return out.contiguous(memory_format=layout)


def conv_guard(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """The context a training step's forward and backward run in: the guard for bf16 on the CPU, else nothing.

    The backward needs it too: gradient checkpointing runs the forward again there.
    """
    if device.type == "cpu" and amp == "bf16":
        return UnstridedSingleOutputConv()
    return contextlib.nullcontext()
