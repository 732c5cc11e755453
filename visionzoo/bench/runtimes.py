"""Inference runtimes the benchmark can time a model in, behind one interface.

A runtime turns an eval-mode ``nn.Module``, the run's settings and the input shapes it will be called with into
``infer(images) -> output``. ``torch`` runs the module itself: eager or ``torch.compile``, autocast for bf16/fp16,
optional channels_last, under ``inference_mode``. ``onnxruntime`` and ``executorch`` time the programs
:mod:`visionzoo.export` writes: one static-shape program per requested shape, each checked against the module's
own output before it is timed, so a figure is never taken from a program that computes something else.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import tempfile
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import nn

Shape = tuple[int, ...]


class InferenceSettings(Protocol):
    device: str
    dtype: str
    channels_last: bool
    compile: bool
    deploy: bool


Infer = Callable[[torch.Tensor], object]
Runtime = Callable[[nn.Module, InferenceSettings, Sequence[Shape]], Infer]

_RUNTIMES: dict[str, Runtime] = {}
# Exported-program runtimes: the export format each runs, and the package it needs.
EXPORT_FORMAT = {"onnxruntime": "onnx", "executorch": "executorch"}
RUNTIME_PACKAGE = {"onnxruntime": "onnxruntime", "executorch": "executorch"}
PARITY_TOLERANCE = 1e-4


class RuntimeParityError(RuntimeError):
    """An exported program's output differs from the PyTorch module it was exported from."""


def register_runtime(name: str) -> Callable[[Runtime], Runtime]:
    def decorator(runtime: Runtime) -> Runtime:
        if name in _RUNTIMES:
            raise ValueError(f"runtime {name!r} is already registered")
        _RUNTIMES[name] = runtime
        return runtime

    return decorator


def available_runtimes() -> list[str]:
    return sorted(_RUNTIMES)


def missing_package(name: str) -> str | None:
    """The package runtime ``name`` needs but cannot import here, or None."""
    package = RUNTIME_PACKAGE.get(name)
    return package if package and importlib.util.find_spec(package) is None else None


def get_runtime(name: str) -> Runtime:
    if name not in _RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; available: {', '.join(available_runtimes())}")
    package = missing_package(name)
    if package:
        raise ValueError(f"runtime {name!r} needs the {package} package: pip install 'visionzoo[export]'")
    return _RUNTIMES[name]


def autocast_for(device: str, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for bf16/fp16 (weights stay fp32, matmuls and convs run in the low dtype); none for fp32."""
    if dtype == "fp32":
        return contextlib.nullcontext()
    low = torch.bfloat16 if dtype == "bf16" else torch.float16
    return torch.autocast(device_type=torch.device(device).type, dtype=low)


def compile_for_inference(model: nn.Module, frozen: bool) -> Callable[[torch.Tensor], object]:
    """``torch.compile`` for inference; ``frozen`` (the deploy form) also turns on inductor's weight freezing.

    A frozen model's weights are constants to the compiler, so on the CPU it prepacks them (MKL / oneDNN) and
    fuses BatchNorm, bias and activations into the conv kernels. That is only valid for weights that never change,
    which is what ``--deploy`` promises; the training step is compiled without it. Inductor reads ``freezing``
    from its global config when a call compiles (``torch.compile(options=...)`` does not reach it), so each call
    runs under the patch and recompiles see it too. Shapes stay static: each timed shape (the batch, batch 1) gets
    its own specialised graph, as each gets its own exported program, instead of the batch-1 call turning the
    batch dimension dynamic for every later call.
    """
    import torch._inductor.config as inductor_config

    compiled = torch.compile(model, dynamic=False)
    if not frozen:
        return compiled

    def run_frozen(images: torch.Tensor) -> object:
        with inductor_config.patch(freezing=True):
            return compiled(images)

    return run_frozen


@register_runtime("torch")
def torch_runtime(model: nn.Module, settings: InferenceSettings, shapes: Sequence[Shape] = ()) -> Infer:
    model = model.eval().to(torch.device(settings.device))
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    runnable = compile_for_inference(model, frozen=settings.deploy) if settings.compile else model

    def infer(images: torch.Tensor) -> object:
        with torch.inference_mode(), autocast_for(settings.device, settings.dtype):
            return runnable(images)

    return infer


class ExportedPrograms:
    """One exported program per input shape, written to a private temporary folder and run in its runtime.

    ``details`` records, per shape, the program's file size and its max relative error against the module
    (``max|runtime − torch| / max|torch|`` on seeded random input), and the runtime's thread count.
    """

    def __init__(self, runtime: str, model: nn.Module, shapes: Sequence[Shape], threads: int):
        from visionzoo.export.core import ops_backends_for
        from visionzoo.export.formats import FORMATS
        from visionzoo.export.inputs import max_relative_error

        fmt = FORMATS[EXPORT_FORMAT[runtime]]
        self._folder = tempfile.TemporaryDirectory(prefix=f"visionzoo-bench-{runtime}-")
        self._programs: dict[Shape, Callable[[torch.Tensor], object]] = {}
        self.details: dict = {"name": runtime, "version": importlib.metadata.version(RUNTIME_PACKAGE[runtime]),
                              "format": fmt.name, "threads": threads, "programs": []}
        model = model.eval()
        with ops_backends_for(fmt):
            for shape in dict.fromkeys(tuple(s) for s in shapes):
                example = torch.randn(shape, generator=torch.Generator().manual_seed(0))
                path = Path(self._folder.name) / f"b{shape[0]}_{'x'.join(map(str, shape[2:]))}{fmt.suffix}"
                with torch.no_grad():
                    reference = model(example)
                    fmt.export(model, example, path, None)
                run = fmt.runner(path, threads=threads)
                error = max_relative_error(run(example), reference)
                if not error < PARITY_TOLERANCE:
                    raise RuntimeParityError(
                        f"the {fmt.name} program for input {list(shape)} differs from the PyTorch model by max "
                        f"relative error {error:.3g} (tolerance {PARITY_TOLERANCE:g}) in {runtime}; its timings would "
                        f"not describe this model. Check it with `visionzoo export NAME --format {fmt.name}`")
                self._programs[shape] = run
                self.details["programs"].append(
                    {"input_shape": list(shape), "file_bytes": path.stat().st_size, "max_rel_error": error})

    def __call__(self, images: torch.Tensor) -> object:
        run = self._programs.get(tuple(images.shape))
        if run is None:
            raise ValueError(f"no exported program for input shape {list(images.shape)}; this runtime was prepared "
                             f"for {[list(shape) for shape in self._programs]}")
        return run(images)


def _exported_runtime(name: str) -> Runtime:
    def runtime(model: nn.Module, settings: InferenceSettings, shapes: Sequence[Shape] = ()) -> Infer:
        if not shapes:
            raise ValueError(f"the {name} runtime exports one program per input shape: pass the shapes to prepare")
        return ExportedPrograms(name, model, shapes, threads=torch.get_num_threads())

    runtime.__name__ = f"{name}_runtime"
    return runtime


for _name in EXPORT_FORMAT:
    register_runtime(_name)(_exported_runtime(_name))
