"""Choosing each stage's batch chunk (:class:`visionzoo.layers.batch_chunks.BatchChunked`) by timing it."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from visionzoo.bench.timing import Schedule, Timer, WallTimer, measure, summarize
from visionzoo.layers.batch_chunks import BatchChunked

# A chunk must beat the whole batch by this fraction to be kept: below it, timing noise decides.
MIN_GAIN = 0.05
TUNING_SCHEDULE = Schedule(warmup=1, iters=3)


def _stage_inputs(model: nn.Module, images: torch.Tensor) -> list[tuple | None]:
    captured: list[tuple | None] = [None] * len(model.stages)
    hooks = [stage.register_forward_pre_hook(lambda module, args, index=index: captured.__setitem__(index, args))
             for index, stage in enumerate(model.stages)]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def _halvings(batch: int) -> list[int]:
    sizes = []
    size = batch // 2
    while size >= 1:
        sizes.append(size)
        size //= 2
    return sizes


def tune_stage_chunks(model: nn.Module, images: torch.Tensor, timer: Timer | None = None,
                      schedule: Schedule = TUNING_SCHEDULE) -> list[int | None]:
    """Wrap each of ``model.stages`` in :class:`BatchChunked` where a smaller batch runs measurably faster.

    Tries halving chunk sizes from half of ``images``' batch down to one image, stage by stage from the input,
    and stops at the first stage no chunk speeds up by ``MIN_GAIN`` (later stages are smaller). Returns each
    stage's chunk (None: runs whole). The model must be in eval mode; models without a ``stages`` sequence are
    left alone.
    """
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential):
        return []
    chunks: list[int | None] = [None] * len(stages)
    if model.training:
        return chunks
    timer = timer or WallTimer()

    def median_seconds(fn: Callable[[], object]) -> float:
        return summarize(measure(fn, timer, schedule))["median_s"]

    with torch.inference_mode():
        inputs = _stage_inputs(model, images)
        for index, (stage, args) in enumerate(zip(stages, inputs)):
            if not (isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], torch.Tensor)):
                break
            x = args[0]
            whole = median_seconds(lambda: stage(x))
            timed = {size: median_seconds(lambda size=size: torch.cat([stage(part) for part in x.split(size)]))
                     for size in _halvings(x.shape[0])}
            if not timed:
                break
            best = min(timed, key=timed.get)
            if timed[best] > whole * (1 - MIN_GAIN):
                break
            chunks[index] = best
    for index, chunk in enumerate(chunks):
        if chunk is not None:
            stages[index] = BatchChunked(stages[index], chunk)
    return chunks
