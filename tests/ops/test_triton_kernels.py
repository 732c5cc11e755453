"""The Triton kernels, run on the CPU through Triton's interpreter (TRITON_INTERPRET=1) against the reference.

Triton picks the interpreter when it defines a kernel, its own library functions included, and timm imports
Triton before any test runs: so the kernels run in a fresh interpreter process started with the variable set.
"""
import importlib.util
import os
import subprocess
import sys

import pytest
import torch

from visionzoo.ops import get_op

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")


def run_interpreted(code: str) -> str:
    """Run ``code`` in a fresh Python with TRITON_INTERPRET=1 and return its standard output."""
    environment = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_the_package_imports_and_runs_without_triton():
    # sys.modules[name] = None makes `import triton` fail, as on a machine without it.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, visionzoo\n"
        "from visionzoo.ops import get_op\n"
        "op = get_op('window_attention')\n"
        "assert not op.backends['triton'].importable\n"
        "print(tuple(op(torch.randn(1, 4, 4, 6), torch.randn(18, 6), None, (2, 2), 2).shape))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(1, 4, 4, 6)"


WINDOW_CASES = [
    (1, 6, 4, (3, 2), 2, 4),    # batch 1, 6-token windows padded to a 16-token tile
    (2, 7, 7, (7, 7), 3, 5),    # DaViT's 7x7 window on a padded map, odd head width
    (1, 4, 10, (2, 5), 1, 16),  # one head, rectangular windows
]


def test_window_kernel_matches_the_reference_and_is_one_op():
    code = f"""
import torch, torch.nn.functional as F
from visionzoo.ops import get_op
from visionzoo.ops.triton.window_attention import window_attention
generator = torch.Generator().manual_seed(0)
for batch, height, width, window, heads, head_dim in {WINDOW_CASES!r}:
    x = torch.randn(batch, height, width, 6, generator=generator)
    weight = torch.randn(3 * heads * head_dim, 6, generator=generator) / 6 ** 0.5
    bias = torch.randn(3 * heads * head_dim, generator=generator)
    expected = get_op("window_attention").reference(x, weight, bias, window, heads)
    actual = window_attention(F.linear(x, weight, bias), *window, heads, head_dim ** -0.5)
    print(tuple(actual.shape) == tuple(expected.shape), float((actual - expected).abs().max()))
# torch.compile and export see one op of the torch.library registry, not the kernel launch inside it.
print(type(torch.ops.visionzoo.window_attention.default).__name__)
"""
    lines = run_interpreted(code).strip().splitlines()
    assert len(lines) == len(WINDOW_CASES) + 1
    for line in lines[:-1]:
        same_shape, error = line.split()
        assert same_shape == "True" and float(error) < 1e-5, line
    assert lines[-1] == "OpOverload"


def test_auto_mode_takes_the_kernel_only_on_a_gpu_without_autograd():
    op = get_op("window_attention")
    sample = op.samples()[0]
    assert op.select(*sample.args) is not op.implementation("triton")  # CPU tensors
    declared = op.backends["triton"]
    assert declared.devices == {"cuda"} and declared.priority > op.backends["sdpa"].priority
    x, weight, bias, window, heads = sample.args
    assert declared.supports(x, weight, bias, window, heads)
    assert not declared.supports(x, weight.requires_grad_(), bias, window, heads)
