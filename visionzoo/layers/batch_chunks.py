"""CPU inference in batch chunks for the stages whose activations overflow the cache.

A high-resolution stage at batch 16 streams tensors of tens of MiB through every elementwise op, norm and
narrow matmul, and on a CPU those passes run at memory speed (a 2-core Xeon of this project's CI: 130 GB/s for a
1 MiB operand, 26 GB/s for 64 MiB). Run a few images at a time, the same stage keeps its operands in cache:
LITv2-S's first stage at batch 16 took 219 ms whole and 100 ms an image at a time, HaloNet-26t's 180 ms and
94 ms in chunks of four. Later stages hold less and lose to the extra calls, and the crossover depends on the
machine's caches, so :func:`visionzoo.bench.chunks.tune_stage_chunks` measures it instead of guessing.
"""
from __future__ import annotations

import torch
from torch import nn

from visionzoo.ops import eager_cpu_inference


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
        if x.shape[0] <= self.chunk or not eager_cpu_inference(x, self.module.parameters()):
            return self.module(x)
        return torch.cat([self.module(part) for part in x.split(self.chunk)])

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}"


def stage_chunks(model: nn.Module) -> list[int | None] | None:
    """Each stage's chunk (None: runs whole); None for a model without a ``stages`` sequence."""
    stages = getattr(model, "stages", None)
    if not isinstance(stages, nn.Sequential):
        return None
    return [stage.chunk if isinstance(stage, BatchChunked) else None for stage in stages]
