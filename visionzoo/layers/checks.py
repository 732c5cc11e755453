"""Input validation with messages that say what was wrong and how to fix it.

The checks read Python values off the tensor (type, dtype, shape), which a symbolic trace cannot; the modules
that call them keep the call out of the trace with ``torch.fx.wrap``, so a traced model still checks its input.
"""
from __future__ import annotations

import torch


def check_image_input(
    x: torch.Tensor, in_chans: int, min_size: int = 1, model_name: str = "the model", multiple: int = 1
) -> None:
    """Raise unless ``x`` is a non-empty floating-point (N, in_chans, H, W) batch with H, W ≥ ``min_size`` and
    multiples of ``multiple``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{model_name} expects a torch.Tensor image batch, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"{model_name} expects a floating-point image batch, got dtype {x.dtype}; convert it with x.float() "
            f"(and normalise it as the model's pretrained_cfg mean/std say) before the call"
        )
    if x.dim() != 4:
        hint = " (add a batch dimension with x.unsqueeze(0))" if x.dim() == 3 else ""
        raise ValueError(
            f"{model_name} expects an image batch of shape (N, {in_chans}, H, W), got {tuple(x.shape)}{hint}"
        )
    if x.shape[1] != in_chans:
        hint = (
            " (the input looks channels-last: use x.permute(0, 3, 1, 2))" if x.shape[-1] == in_chans else
            f" (build the model with in_chans={x.shape[1]} to accept this input)"
        )
        raise ValueError(
            f"{model_name} expects {in_chans} input channels, got {x.shape[1]} in a tensor of shape "
            f"{tuple(x.shape)}{hint}"
        )
    if x.shape[0] == 0:
        raise ValueError(
            f"{model_name} got an empty batch (shape {tuple(x.shape)}); pass at least one image, or skip the call"
        )
    height, width = x.shape[-2], x.shape[-1]
    if height < min_size or width < min_size:
        raise ValueError(
            f"{model_name} needs inputs of at least {min_size}x{min_size} pixels, got {height}x{width}; "
            f"resize or pad the image"
        )
    if height % multiple or width % multiple:
        raise ValueError(
            f"{model_name} needs input sides that are multiples of {multiple}, got {height}x{width}; "
            f"resize or pad to e.g. {-(-height // multiple) * multiple}x{-(-width // multiple) * multiple}"
        )
