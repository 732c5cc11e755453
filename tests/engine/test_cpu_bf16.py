"""The bf16 CPU training guard: strided convs with one output position give oneDNN no chance to skip gradient taps."""
import contextlib
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from _training import subprocess_env
from visionzoo.engine.cpu_bf16 import UnstridedSingleOutputConv, conv_guard

# A 3x3 stride-2 depthwise conv on 1x1 channels-last maps in bf16, as SHViT's last patch merging meets 32 px
# digits. glibc's MALLOC_PERTURB_=128 fills fresh allocations with 0x7f bytes (3.4e38 in bf16), so a weight-gradient
# tap the kernel leaves unwritten shows up at once instead of only when the memory held NaN before.
WEIGHT_GRADIENT_ERROR = """
import torch
from visionzoo.engine.cpu_bf16 import conv_guard

torch.manual_seed(0)
conv = torch.nn.Conv2d(64, 64, 3, stride=2, padding=1, groups=64, bias=False).to(memory_format=torch.channels_last)
images = torch.randn(8, 64, 1, 1).contiguous(memory_format=torch.channels_last)
with conv_guard(torch.device("cpu"), "bf16"):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(images)
    out.float().sum().backward()
expected = torch.zeros_like(conv.weight)
expected[:, 0, 1, 1] = images.bfloat16().float().sum(0)[:, 0, 0]  # only the centre tap ever sees the image
print((conv.weight.grad - expected).abs().max().item())
"""


def test_bf16_weight_gradient_of_a_strided_conv_with_one_output_position_is_exact_in_fresh_memory():
    env = dict(subprocess_env(), MALLOC_PERTURB_="128", MALLOC_MMAP_THRESHOLD_=str(2**30))
    done = subprocess.run([sys.executable, "-c", WEIGHT_GRADIENT_ERROR], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert float(done.stdout) < 0.1


GEOMETRIES = [
    dict(size=(1, 1), kernel=3, stride=2, padding=1),
    dict(size=(2, 2), kernel=3, stride=3, padding=1),
    dict(size=(7, 1), kernel=3, stride=2, padding=1),  # one column, four rows: only the width is unstrided
    dict(size=(1, 6), kernel=(3, 1), stride=(2, 3), padding=(1, 0)),
    dict(size=(3, 3), kernel=2, stride=2, padding="valid", dilation=2),
    dict(size=(2, 2), kernel=3, stride=2, padding=1, groups=4),
    dict(size=(5, 5), kernel=3, stride=2, padding=1),  # no single output position: left alone
]
UNBATCHED = dict(size=(1, 1), kernel=3, stride=2, padding=1, unbatched=True)  # (C, H, W) has no channels-last form


@pytest.mark.parametrize(
    "case, channels_last",
    [(case, layout) for case in GEOMETRIES for layout in (False, True)] + [(UNBATCHED, False)],
)
def test_guarded_conv_gives_the_plain_conv_numbers_shape_and_layout(case, channels_last):
    case = dict(case)
    unbatched, size, kernel = case.pop("unbatched", False), case.pop("size"), case.pop("kernel")
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    groups = case.get("groups", 1)
    images = torch.randn(3, 4, *size, dtype=torch.float64)
    weight = torch.randn(8, 4 // groups, *kernel, dtype=torch.float64)
    bias = torch.randn(8, dtype=torch.float64)
    if channels_last:
        images, weight = (t.contiguous(memory_format=torch.channels_last) for t in (images, weight))
    if unbatched:
        images = images[0]

    def run(guard: contextlib.AbstractContextManager):
        inputs = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_() for t in (images, weight, bias)]
        with guard:
            out = F.conv2d(inputs[0], inputs[1], bias=inputs[2], **case)
            out.backward(torch.arange(out.numel(), dtype=out.dtype).reshape(out.shape))
        return out, [t.grad for t in inputs]

    expected, expected_grads = run(contextlib.nullcontext())
    out, grads = run(UnstridedSingleOutputConv())
    assert out.shape == expected.shape and out.stride() == expected.stride()
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)


def test_the_guard_is_used_only_for_bf16_on_the_cpu():
    assert isinstance(conv_guard(torch.device("cpu"), "bf16"), UnstridedSingleOutputConv)
    for device, amp in [("cpu", "none"), ("cpu", "auto"), ("cuda", "bf16"), ("cuda", "fp16")]:
        assert isinstance(conv_guard(torch.device(device), amp), contextlib.nullcontext)
