"""The three export formats: how each is written, checked and (where this OS can) run.

Every writer takes an eval-mode model, an example input and a target path (already a temporary name:
:mod:`visionzoo.export._files` renames it when complete) and returns facts about the export.
"""
from __future__ import annotations

import abc
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.export import Dim

INPUT_NAME = "image"
OUTPUT_NAME = "output"
MAX_BATCH = 64
# Ops that coremltools 9.0 cannot convert but that decompose into ops it can (aten.alias is dropped instead).
COREML_MISSING_OPS = (torch.ops.aten.addcmul.default, torch.ops.aten.new_ones.default)


def dynamic_shapes(dynamic_batch: bool, dynamic_size: bool, height: int, width: int):
    """``dynamic_shapes`` for ``torch.export`` / ``torch.onnx.export`` of a model taking one image batch.

    The batch is a named dim (export fails loudly if the model fixes it; it must be traced with an
    example batch ≥ 2, since batch 1 specialises). Height and width are ``Dim.AUTO`` so a model that
    needs e.g. multiples of 32 still exports with that constraint; bounds keep ExecuTorch's memory
    planning finite.
    """
    if not (dynamic_batch or dynamic_size):
        return None
    dims = {}
    if dynamic_batch:
        dims[0] = Dim("batch", min=1, max=MAX_BATCH)
    if dynamic_size:
        dims[2] = Dim.AUTO(min=1, max=2 * height)
        dims[3] = Dim.AUTO(min=1, max=2 * width)
    return (dims,)


def median_latency_ms(run: Callable[[torch.Tensor], np.ndarray], x: torch.Tensor, repeats: int) -> float:
    run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


@dataclass(frozen=True)
class Format(abc.ABC):
    name: str
    suffix: str
    runtime: str
    needs_portable_layers: bool

    @abc.abstractmethod
    def export(self, model: nn.Module, example: torch.Tensor, path: Path, shapes) -> dict:
        """Write ``model`` traced on ``example`` (with ``shapes`` from :func:`dynamic_shapes`) to ``path``."""

    def check(self, path: Path, example: torch.Tensor, output_shape: tuple[int, ...]) -> dict:
        """Format-level validation of a written file; raises on a broken file."""
        return {}

    def runner(self, path: Path, threads: int | None = None) -> Callable[[torch.Tensor], np.ndarray] | None:
        """A callable running the export on this machine (on ``threads`` intra-op threads, else the runtime's
        default), or None where the runtime cannot run here."""
        return None


class OnnxFormat(Format):
    def export(self, model, example, path, shapes) -> dict:
        try:
            program = torch.onnx.export(
                model, (example,), dynamo=True, dynamic_shapes=shapes, opset_version=20,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False,
            )
            program.save(str(path))
            return {"exporter": "dynamo"}
        except Exception as dynamo_error:
            # The TorchScript exporter is the fallback only where the dynamo exporter fails.
            axes = None
            if shapes is not None:
                names = {0: "batch", 2: "height", 3: "width"}
                axes = {INPUT_NAME: {axis: names[axis] for axis in shapes[0]}, OUTPUT_NAME: {0: "batch"}}
            try:
                torch.onnx.export(
                    model, (example,), str(path), dynamo=False, dynamic_axes=axes, opset_version=20,
                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                )
            except Exception:
                raise dynamo_error from None
            return {"exporter": "torchscript", "dynamo_error": first_line(dynamo_error)}

    def check(self, path, example, output_shape) -> dict:
        import onnx

        onnx.checker.check_model(str(path), full_check=True)
        return {}

    def runner(self, path, threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        if threads is not None:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {INPUT_NAME: x.numpy()})[0]


class ExecuTorchFormat(Format):
    def export(self, model, example, path, shapes) -> dict:
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
        path.write_bytes(lowered.buffer)
        return {"exporter": "torch.export + XNNPACK"}

    def runner(self, path, threads=None):
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        # XNNPACK runs on ExecuTorch's process-wide thread pool; it is resized only when nothing is running.
        if threads is not None and portable_lib._threadpool_get_thread_count() != threads:
            portable_lib._unsafe_reset_threadpool(threads)
        method = Runtime.get().load_program(str(path)).load_method("forward")
        return lambda x: method.execute([x.contiguous()])[0].numpy()


class CoreMLFormat(Format):
    def export(self, model, example, path, shapes) -> dict:
        import coremltools as ct

        # No decompositions except for the ops coremltools 9.0 has no converter for.
        core = torch.export.default_decompositions()
        program = torch.export.export(model, (example,), dynamic_shapes=shapes)
        program = program.run_decompositions({op: core[op] for op in COREML_MISSING_OPS})
        _drop_aliases(program)
        shape = list(example.shape)
        if shapes is not None:
            for axis in shapes[0]:
                shape[axis] = ct.RangeDim(1, MAX_BATCH if axis == 0 else 2 * example.shape[axis], default=shape[axis])
        mlmodel = ct.convert(
            program, convert_to="mlprogram", compute_precision=ct.precision.FLOAT32,
            inputs=[ct.TensorType(name=INPUT_NAME, shape=ct.Shape(shape))],
        )
        mlmodel.save(str(path))
        return {"exporter": "torch.export + coremltools (mlprogram, fp32)"}

    def check(self, path, example, output_shape) -> dict:
        import coremltools as ct

        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
        inputs = list(spec.description.input)
        outputs = list(spec.description.output)
        if [i.name for i in inputs] != [INPUT_NAME]:
            raise ValueError(f"Core ML inputs are {[i.name for i in inputs]}, expected [{INPUT_NAME!r}]")
        input_shape = tuple(inputs[0].type.multiArrayType.shape)
        if input_shape != tuple(example.shape):
            raise ValueError(f"Core ML input shape {input_shape} differs from the example {tuple(example.shape)}")
        if len(outputs) != 1:
            raise ValueError(f"Core ML model has {len(outputs)} outputs, expected 1")
        output_shape_spec = tuple(outputs[0].type.multiArrayType.shape)
        if output_shape_spec and output_shape_spec != tuple(output_shape):
            raise ValueError(f"Core ML output shape {output_shape_spec} differs from PyTorch's {tuple(output_shape)}")
        return {"coreml_input": [INPUT_NAME, list(input_shape)], "coreml_output": [outputs[0].name, list(output_shape_spec)]}

    def runner(self, path, threads=None):
        if platform.system() != "Darwin":
            return None
        import coremltools as ct

        mlmodel = ct.models.MLModel(str(path))
        output = mlmodel.get_spec().description.output[0].name
        return lambda x: mlmodel.predict({INPUT_NAME: x.numpy()})[output]


def _drop_aliases(program: torch.export.ExportedProgram) -> None:
    """Remove ``aten.alias`` nodes (no-op views, e.g. from zero padding), which coremltools cannot convert."""
    graph = program.graph_module.graph
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.alias.default:
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
    program.graph_module.recompile()


FORMATS: dict[str, Format] = {
    "onnx": OnnxFormat("onnx", ".onnx", "onnxruntime (CPUExecutionProvider)", needs_portable_layers=False),
    "executorch": ExecuTorchFormat("executorch", ".pte", "ExecuTorch (XNNPACK)", needs_portable_layers=True),
    "coreml": CoreMLFormat("coreml", ".mlpackage", "Core ML (needs macOS)", needs_portable_layers=True),
}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    line = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {line}"[:300]
