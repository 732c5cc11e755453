"""Attention math as plain functions; each op has a reference and fast backends behind one dispatcher.

Every module in this package is imported here so that :func:`list_ops` names every op.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from visionzoo.ops._dispatch import REFERENCE, Op, eager_cpu_inference, get_op, list_ops, use_backend
from visionzoo.ops.attention import scaled_dot_product_attention, sdpa_reference

for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "REFERENCE",
    "Op",
    "eager_cpu_inference",
    "get_op",
    "list_ops",
    "use_backend",
    "scaled_dot_product_attention",
    "sdpa_reference",
]
