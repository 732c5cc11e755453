"""FlexAttention plumbing shared by the ops' ``flex`` backends: block masks built once per shape, and where flex pays.

FlexAttention (``torch.nn.attention.flex_attention``) runs fused only when compiled: ``torch.compile`` turns the
``score_mod`` / ``mask_mod`` into a Triton kernel on GPUs and a C++ template on the CPU, and skips the key blocks
that the block mask marks empty. Called eagerly it computes the same function through a reference path that
materialises every score, so the backends' ``supports`` accept a call only where it is fused: under
``torch.compile`` or off the CPU (an eager GPU call still launches flex's own compiled kernel). FlexAttention has
no backward on the CPU, so there a call that autograd records goes to another backend too; the backends declare
``differentiable=False`` because the op contract checks backward on the CPU, the one place flex has none.

A mask modifier is built by a factory from plain ints, so that (factory, ints, lengths, device) names its block
mask: :func:`cached_block_mask` builds each once per input shape and reuses it, in eager and compiled code alike
(torch.compile traces the lookup and keeps the mask as a constant of the graph).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

__all__ = ["FLEX_DEVICES", "cached_block_mask", "flex_attention", "flex_is_fused", "window_mask_mod"]

# Where flex_attention runs and this project has run it (it refuses the meta device, for one).
FLEX_DEVICES = ("cpu", "cuda")
_BLOCK_MASKS: dict[tuple, BlockMask] = {}


def flex_is_fused(*tensors: torch.Tensor | None) -> bool:
    """Whether a flex call on ``tensors`` (the first one's device) runs fused (compiled, or on an accelerator)
    rather than materialised, and autograd, if it records the call, has a flex backward there."""
    device_type = tensors[0].device.type
    if device_type == "cpu":
        recorded = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)
        return torch.compiler.is_compiling() and not recorded
    return True


def cached_block_mask(factory: Callable[..., Callable], params: tuple[int, ...], query_len: int, key_len: int,
                      device: torch.device) -> BlockMask:
    """The block mask of ``factory(*params)`` for ``query_len`` queries and ``key_len`` keys, built once."""
    key = (factory, params, query_len, key_len, str(device))
    mask = _BLOCK_MASKS.get(key)
    if mask is None:
        mask = create_block_mask(factory(*params), None, None, query_len, key_len, device=device)
        _BLOCK_MASKS[key] = mask
    return mask


def window_mask_mod(width: int, window_height: int, window_width: int) -> Callable:
    """Tokens of a row-major map ``width`` wide attend within their own ``window_height × window_width`` window."""

    def same_window(batch, head, query, key):
        same_rows = query // width // window_height == key // width // window_height
        same_cols = query % width // window_width == key % width // window_width
        return same_rows & same_cols

    return same_window
