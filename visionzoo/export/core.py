"""Export one zoo model to one format, then check it against PyTorch in the format's own runtime.

Parity is the max relative error ``max|out − ref| / max|ref|`` between the runtime's output and eager
PyTorch's on the same input, measured on seeded random input and on three real photographs
(:mod:`visionzoo.export.inputs`); an export passes when every comparison is below ``tolerance``.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from visionzoo.export._files import ExportError, check_writable, staged_output
from visionzoo.export.formats import FORMATS, Format, dynamic_shapes, first_line, median_latency_ms
from visionzoo.export.inputs import photo_batch, random_input, max_relative_error
from visionzoo.export.trained import TrainedSetup, create_trained_model
from visionzoo.layers.fuse import fuse_model
from visionzoo.models._registry import family_of
from visionzoo.ops import portable_only

DEFAULT_TOLERANCE = 1e-4
MACOS_ONLY = "Core ML prediction needs macOS: not run here; conversion and the saved spec (input/output names, shapes) checked"

# Operator names as exporters print them: aten::unfold, aten.index_put_.default, torchvision::deform_conv2d,
# coremltools' "convert function for op 'xyz' not implemented", onnxruntime's "running Concat node. Name:'x'".
_OP_PATTERNS = (
    re.compile(r"\b((?:aten|torchvision|prims|quantized|_c10d_functional)(?:::|\.)[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)?)"),
    re.compile(r"\bop '([A-Za-z0-9_.:]+)'"),
    re.compile(r"\bop(?:erator)? ([A-Za-z0-9_]+::[A-Za-z0-9_.]+)"),
    re.compile(r"running (\w+ node\. Name:'[^']+')"),  # onnxruntime
)


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise ExportError(f"unknown export format {name!r}; choose one of: {', '.join(FORMATS)}") from None


def failing_op(error: BaseException) -> str | None:
    """The operator an exporter blames in its message, if it names one."""
    text = "\n".join(str(e) for e in (error, error.__cause__, error.__context__) if e is not None)
    for pattern in _OP_PATTERNS:
        match = pattern.search(text)
        if match:
            return match.group(1)
    return None


def default_output(name: str, fmt: Format, deploy: bool, folder: str | Path = "exports") -> Path:
    return Path(folder) / f"{name}{'_deploy' if deploy else ''}{fmt.suffix}"


def build_model(name: str | None, checkpoint: str | Path | None = None, deploy: bool = False,
                model_kwargs: dict | None = None, num_classes: int | None = None,
                ema: bool = False) -> tuple[nn.Module, TrainedSetup]:
    """The eval-mode model to export and how it was built: ``model_kwargs`` (e.g. other ``depths``) and the
    class count over what a training ``checkpoint`` records, its weights loaded through the family's filter, BN
    folded if ``deploy``."""
    model, setup = create_trained_model(name, checkpoint, num_classes, model_kwargs, ema)
    model.eval()
    return (fuse_model(model, inplace=True) if deploy else model), setup


def _input_size(model: nn.Module, img_size: int | tuple[int, int] | None, trained_size: int | None = None
                ) -> tuple[int, int]:
    img_size = img_size if img_size is not None else trained_size
    input_size = tuple(model.pretrained_cfg["input_size"])
    if family_of(model).input_kind == "points":
        # (points, point dims): a size sets the point count, the dims are the model's.
        return input_size if img_size is None else (img_size if isinstance(img_size, int) else img_size[0],
                                                    input_size[1])
    if img_size is None:
        return input_size[1:]
    if isinstance(img_size, int):
        return img_size, img_size
    return tuple(img_size)


def _parity_inputs(model, height, width, dynamic_batch, dynamic_size) -> dict[str, torch.Tensor]:
    """Named inputs: random at the traced shape, a second batch / size when dynamic, and the photographs (for a
    point-cloud family, whose N is fixed at export, a second seeded cloud instead)."""
    cfg = model.pretrained_cfg
    if family_of(model).input_kind == "points":
        if dynamic_size:
            raise ExportError(f"{type(model).__name__} exports at a fixed number of points (FPS unrolls per point)")
        batch = 2 if dynamic_batch else 1
        return {f"random b{batch} {height} points": random_input(model, batch, height, width),
                f"random b{batch} {height} points seed 1": random_input(model, batch, height, width, seed=1)}
    inputs = {f"random b{2 if dynamic_batch else 1} {height}x{width}": random_input(model, 2 if dynamic_batch else 1, height, width)}
    if dynamic_batch:
        inputs[f"random b3 {height}x{width}"] = random_input(model, 3, height, width, seed=1)
    if dynamic_size:
        inputs[f"random b1 {height + 32}x{width + 32}"] = random_input(model, 1, height + 32, width + 32, seed=2)
    photos = photo_batch(height, width, cfg["mean"], cfg["std"])
    if dynamic_batch:
        inputs[f"photos b3 {height}x{width}"] = photos
    else:
        for index, photo in enumerate(photos):
            inputs[f"photo {index + 1} {height}x{width}"] = photo[None]
    return inputs


def export_model(
    name: str | None,
    format: str,
    out: str | Path | None = None,
    img_size: int | tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    dynamic_size: bool = False,
    deploy: bool = False,
    checkpoint: str | Path | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    latency_repeats: int = 0,
    model_kwargs: dict | None = None,
    num_classes: int | None = None,
    ema: bool = False,
) -> dict:
    """Export ``name`` to ``format`` at ``out`` and check parity; returns a result record (never hides a failure).

    ``name`` may be None when ``checkpoint`` is a training checkpoint, which records its model; the class
    count and input size it records are used unless ``num_classes`` / ``img_size`` say otherwise.
    Bad requests (unknown model or format, unwritable ``out``, a checkpoint that does not fit) raise before
    anything is written. Failures of the exporter or runtime are caught and returned with
    ``status='failed'``, the first line of the exception and the operator it names; parity above
    ``tolerance`` gives ``status='mismatch'``. The file is moved to ``out`` only when its checks pass
    (``ok``, or ``converted`` where the runtime cannot run here): otherwise it is deleted and a file already
    at ``out`` stays as it was.
    """
    fmt = get_format(format)
    if out is not None and Path(out).suffix != fmt.suffix:
        raise ExportError(f"--out {out} does not end in {fmt.suffix}, the {fmt.name} extension")
    if out is not None:
        check_writable(Path(out))
    model, setup = build_model(name, checkpoint, deploy, model_kwargs, num_classes, ema)
    name = setup.model_name
    out = Path(out) if out is not None else default_output(name, fmt, deploy)
    check_writable(out)
    height, width = _input_size(model, img_size, setup.input_size)
    result = {
        "model": name, "format": fmt.name, "status": "failed", "deploy": deploy,
        "input_size": [height, width], "num_classes": model.num_classes, "dynamic_batch": dynamic_batch,
        "dynamic_size": dynamic_size, "runtime": fmt.runtime, "tolerance": tolerance, "file": str(out),
    }
    if checkpoint is not None:
        result.update(checkpoint=str(checkpoint), ema=ema)
    if model_kwargs:
        result["model_kwargs"] = {key: list(value) if isinstance(value, tuple) else value
                                  for key, value in model_kwargs.items()}
    inputs = _parity_inputs(model, height, width, dynamic_batch, dynamic_size)
    with torch.no_grad():
        references = {label: model(x) for label, x in inputs.items()}
    example = next(iter(inputs.values()))
    stage = "export"
    try:
        with staged_output(out) as staged:
            with torch.no_grad(), ops_backends_for(fmt):
                shapes = dynamic_shapes(dynamic_batch, dynamic_size, height, width)
                result.update(fmt.export(model, example, staged.temp, shapes))
            stage = "check"
            result.update(fmt.check(staged.temp, example, tuple(references[next(iter(references))].shape)))
            result["file_bytes"] = _size(staged.temp)
            stage = "run"
            _run_checks(fmt, staged.temp, model, inputs, references, tolerance, latency_repeats, result)
            if result["status"] in ("ok", "converted"):
                stage = "move"
                staged.commit()
    except Exception as error:  # an exporter or runtime failure is a result to report, not a crash
        result.update(status="failed", stage=stage, error=first_line(error), failing_op=failing_op(error))
    if result["status"] not in ("ok", "converted"):
        result["file"] = None
        reason = f"error above --tolerance {tolerance:g}" if result["status"] == "mismatch" else "export failed"
        result["kept"] = (f"{out} not written ({reason}); the earlier file there is kept, unchanged" if out.exists()
                          else f"{out} not written ({reason})")
    return result


def _run_checks(fmt: Format, path: Path, model: nn.Module, inputs: dict, references: dict, tolerance: float,
                latency_repeats: int, result: dict) -> None:
    """Parity of the written file in its runtime against ``references`` (and its latency), into ``result``."""
    run = fmt.runner(path)
    if run is None:
        result.update(status="converted", note=MACOS_ONLY)
        return
    errors = {label: max_relative_error(run(x), references[label]) for label, x in inputs.items()}
    result["max_rel_error"] = errors
    result["max_rel_error_random"] = max(v for k, v in errors.items() if k.startswith("random"))
    result["max_rel_error_photos"] = max((v for k, v in errors.items() if k.startswith("photo")), default=None)
    result["status"] = "ok" if max(errors.values()) < tolerance else "mismatch"
    if latency_repeats and result["status"] == "ok":
        height, width = result["input_size"]
        result["latency_ms_b1_median"] = median_latency_ms(run, random_input(model, 1, height, width), latency_repeats)


def ops_backends_for(fmt: Format):
    """The ops backends an export to ``fmt`` may trace: portable ones only where its runtime lacks custom kernels
    (ONNX keeps e.g. torchvision's deformable conv, which it has a node for)."""
    return portable_only(fmt.needs_portable_layers)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size
