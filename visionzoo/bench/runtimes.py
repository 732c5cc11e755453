"""Inference runtimes the benchmark can time a model in, behind one interface.

A runtime turns an eval-mode ``nn.Module`` and the run's settings into ``infer(images) -> output``. ``torch`` is
built in: eager or ``torch.compile``, autocast for bf16/fp16, optional channels_last, under ``inference_mode``.
Runtimes that run exported programs (onnxruntime, ExecuTorch) register here with :func:`register_runtime` once
``visionzoo.export`` can produce those programs.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Protocol

import torch
from torch import nn


class InferenceSettings(Protocol):
    device: str
    dtype: str
    channels_last: bool
    compile: bool


Infer = Callable[[torch.Tensor], object]
Runtime = Callable[[nn.Module, InferenceSettings], Infer]

_RUNTIMES: dict[str, Runtime] = {}
# Runtimes named on the command line before the package that provides them exists: each says what it needs.
PLANNED_RUNTIMES = {
    "onnxruntime": "needs ONNX export (visionzoo.export) and the onnxruntime package",
    "executorch": "needs ExecuTorch export (visionzoo.export) and the executorch package",
}


def register_runtime(name: str) -> Callable[[Runtime], Runtime]:
    def decorator(runtime: Runtime) -> Runtime:
        if name in _RUNTIMES:
            raise ValueError(f"runtime {name!r} is already registered")
        _RUNTIMES[name] = runtime
        return runtime

    return decorator


def available_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def get_runtime(name: str) -> Runtime:
    if name in _RUNTIMES:
        return _RUNTIMES[name]
    if name in PLANNED_RUNTIMES:
        raise ValueError(f"runtime {name!r} is not available in this version: it {PLANNED_RUNTIMES[name]}. "
                         f"Available: {', '.join(available_runtimes())}")
    raise ValueError(f"unknown runtime {name!r}; available: {', '.join(available_runtimes())}")


def autocast_for(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16/fp16 (weights stay fp32, matmuls and convs run in the low dtype); none for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    low = torch.bfloat16 if dtype == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=low)


@register_runtime("torch")
def torch_runtime(model: nn.Module, settings: InferenceSettings) -> Infer:
    model = model.eval().to(torch.device(settings.device))
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    runnable = torch.compile(model) if settings.compile else model

    def infer(images: torch.Tensor) -> object:
        with torch.inference_mode(), autocast_for(settings.device, settings.dtype):
            return runnable(images)

    return infer
