"""CPU inference in batch chunks for the stages whose activations overflow the cache.

A high-resolution stage at batch 16 streams tensors of tens of MiB through every elementwise op, norm and
narrow matmul, and on a CPU those passes run at memory speed (a 2-core Xeon of this project's CI: 130 GB/s for a
1 MiB operand, 26 GB/s for 64 MiB). Run a few images at a time, the same stage keeps its operands in cache:
LITv2-S's first stage at batch 16 took 219 ms whole and 100 ms an image at a time, HaloNet-26t's 180 ms and
94 ms in chunks of four. Later stages hold less and lose to the extra calls, and the crossover depends on the
machine's caches, so :func:`tune_stage_chunks` measures it instead of guessing.
"""
from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import nn

# A chunk must beat the whole batch by this fraction to be kept: below it, timing noise decides.
MIN_GAIN = 0.05


def eager_cpu_inference(x: torch.Tensor) -> bool:
    """True for a CPU call with autograd off that no compiler or exporter is tracing."""
    return (x.device.type == "cpu" and not torch.is_grad_enabled() and not torch.compiler.is_compiling()
            and not torch.compiler.is_exporting())


class BatchChunked(nn.Module):
    """Runs ``module`` on ``chunk`` images at a time in eager CPU inference; whole everywhere else.

    Exact for any module that treats the images of a batch independently, as every eval-mode stage does.
    """

    def __init__(self, module: nn.Module, chunk: int):
        super().__init__()
        if chunk < 1:
            raise ValueError(f"chunk must be a positive number of images, got {chunk}")
        self.module = module
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.chunk or not eager_cpu_inference(x):
            return self.module(x)
        return torch.cat([self.module(part) for part in x.split(self.chunk)])

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}"


def _median_seconds(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _stage_inputs(model: nn.Module, images: torch.Tensor) -> list[object]:
    captured: list[object] = [None] * len(model.stages)
    hooks = [stage.register_forward_pre_hook(lambda module, args, index=index: captured.__setitem__(index, args))
             for index, stage in enumerate(model.stages)]
    try:
        model(images)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def tune_stage_chunks(model: nn.Module, images: torch.Tensor, repeats: int = 3) -> list[int | None]:
    """Wrap each of ``model.stages`` in :class:`BatchChunked` where a smaller batch runs measurably faster.

    Tries halving chunk sizes from half of ``images``' batch down to one image, stage by stage from the input,
    and stops at the first stage no chunk speeds up (later stages are smaller). Returns each stage's chunk
    (None: runs whole). The model must be in eval mode; models without a ``stages`` sequence are left alone.
    """
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential) or model.training:
        return [] if stages is None else [None] * len(stages)
    chunks: list[int | None] = [None] * len(stages)
    with torch.inference_mode():
        inputs = _stage_inputs(model, images)
        for index, (stage, args) in enumerate(zip(stages, inputs)):
            if not (isinstance(args, tuple) and len(args) == 1 and isinstance(args[0], torch.Tensor)):
                break
            x = args[0]
            whole = _median_seconds(lambda: stage(x), repeats)
            timed = {size: _median_seconds(lambda size=size: torch.cat([stage(part) for part in x.split(size)]),
                                           repeats)
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


def stage_chunks(model: nn.Module) -> list[int | None] | None:
    """Each stage's chunk as :func:`tune_stage_chunks` left it (None: whole); None for a model without stages."""
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential):
        return None
    return [stage.chunk if isinstance(stage, BatchChunked) else None for stage in stages]


def _halvings(batch: int) -> Sequence[int]:
    sizes = []
    size = batch // 2
    while size >= 1:
        sizes.append(size)
        size //= 2
    return sizes
