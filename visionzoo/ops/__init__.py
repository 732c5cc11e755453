"""Attention math as plain functions; each op has a reference and fast backends behind one dispatcher.

The op boundary, which every op here follows:

* An op takes tensors and plain Python values (ints, floats, tuples), never modules: layers own parameters and
  pass them in, so a backend can be swapped without touching a checkpoint.
* Attention ops take either the projected queries, keys and values (``q, k, v``, or one packed ``qkv`` tensor
  laid out q | k | v) or, where a fast path gains from seeing the input before its projection, the input ``x``
  plus the projection's ``*_weight`` / ``*_bias`` tensors (``window_attention``, ``hilo_attention``; likewise
  ``deform_conv2d`` takes ``x``, its offsets and the conv weight). Learned tables the math needs (relative
  position tables, biases, gates) come in as tensors too.
* They return the attended values before any output projection, in the layout the op's module docstring
  names (tokens-last unless the op says channels-first), and ``scale=None`` means head_dim ** -0.5.
* Where an op checks its arguments, a bad one raises ``ValueError`` naming the expected shapes. The reference is
  the readable spec, and every backend computes the same function on the op's sample inputs
  (``tests/ops/test_op_contract.py``).

:mod:`visionzoo.ops._dispatch` describes how a backend is declared and chosen. Every module in this package is
imported here so that :func:`list_ops` names every op.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from visionzoo.ops._dispatch import (
    AUTO,
    REFERENCE,
    Backend,
    Op,
    Sample,
    check_backend_name,
    eager_cpu_inference,
    environment_backend,
    get_op,
    known_backends,
    list_ops,
    portable_only,
    record_backends,
    trace_leaf,
    use_backend,
)
from visionzoo.ops.attention import scaled_dot_product_attention, sdpa_reference
from visionzoo.ops.neighborhood_attention import neighborhood_attention, neighborhood_av, neighborhood_qk

for _module in _pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "AUTO",
    "REFERENCE",
    "Backend",
    "Op",
    "Sample",
    "check_backend_name",
    "eager_cpu_inference",
    "environment_backend",
    "get_op",
    "known_backends",
    "list_ops",
    "portable_only",
    "record_backends",
    "trace_leaf",
    "use_backend",
    "scaled_dot_product_attention",
    "sdpa_reference",
    "neighborhood_attention",
    "neighborhood_av",
    "neighborhood_qk",
]
