"""The stage loop that timm's ``forward_intermediates`` contract asks of every hierarchical backbone.

Families differ in what surrounds the loop (stems, norms, token layouts); the loop itself, which stages run for
``stop_early``, and which outputs are kept, live here once.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from timm.models._features import feature_take_indices
from torch import nn


def check_nchw_only(output_fmt: str, model_name: str) -> None:
    if output_fmt != "NCHW":
        raise ValueError(f"{model_name} returns NCHW intermediates only, got output_fmt={output_fmt!r}")


def run_stages(
    stages: nn.Sequential,
    x: torch.Tensor,
    indices: int | Sequence[int] | None,
    stop_early: bool,
    run: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
    keep: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``x`` through ``stages`` (only up to the last wanted one when ``stop_early``) and return the last
    output and ``keep(index, output)`` for each stage in ``indices`` (timm's meaning: last n if int, all if None).

    ``run(stage, x)`` replaces ``stage(x)`` (e.g. gradient checkpointing); ``keep`` turns a stage output into the
    returned feature (e.g. a norm or a layout change) and defaults to the output itself.
    """
    take_indices, max_index = feature_take_indices(len(stages), indices)
    intermediates = []
    for index, stage in enumerate(stages[: max_index + 1] if stop_early else stages):
        x = run(stage, x) if run is not None else stage(x)
        if index in take_indices:
            intermediates.append(keep(index, x) if keep is not None else x)
    return x, intermediates


def prune_stages(model: nn.Module, indices: int | Sequence[int]) -> tuple[list[int], int]:
    """Keep ``model.stages`` up to the last stage in ``indices``; returns timm's (take_indices, max_index)."""
    take_indices, max_index = feature_take_indices(len(model.stages), indices)
    model.stages = model.stages[: max_index + 1]
    return take_indices, max_index


def set_stage_checkpointing(model: nn.Module, enable: bool) -> None:
    """Gradient checkpointing on ``model`` and each of its stages (stages checkpoint their own blocks)."""
    model.grad_checkpointing = enable
    for stage in model.stages:
        stage.grad_checkpointing = enable
