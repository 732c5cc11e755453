"""Export zoo models to ONNX, Core ML and ExecuTorch, with parity checked in each runtime (see docs/export.md)."""
from visionzoo.export._files import ExportError
from visionzoo.export.cli import add_export_parser, run_export
from visionzoo.export.core import export_model
from visionzoo.export.formats import FORMATS

__all__ = ["FORMATS", "ExportError", "add_export_parser", "export_model", "run_export"]
