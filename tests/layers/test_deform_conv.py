"""DeformConv2d: a plain conv at init, and the official DCN sampling rule with learned offsets."""
import pytest
import torch
import torch.nn.functional as F

from visionzoo.layers.deform_conv import DeformConv2d
from visionzoo.ops import REFERENCE, portable_only, record_backends
from visionzoo.ops.deform_conv import deform_conv2d


def test_equals_plain_conv_at_init():
    torch.manual_seed(0)
    layer = DeformConv2d(6, 10, kernel_size=2, stride=2)
    x = torch.randn(2, 6, 9, 8)
    assert not layer.conv_offset.weight.any() and not layer.conv_offset.bias.any()
    expected = F.conv2d(x, layer.weight, layer.bias, stride=2)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def _sample_official_rule(layer: DeformConv2d, x: torch.Tensor) -> torch.Tensor:
    """Tap (i, j) of output (y, x) reads x at (2y + i + Δy, 2x + j + Δx), bilinear, zero outside the image.

    Offset channel 2·(i·2 + j) is Δy and 2·(i·2 + j) + 1 is Δx (the official kernel's layout).
    """
    batch, _, height, width = x.shape
    offsets = layer.conv_offset(x)
    out_h, out_w = offsets.shape[-2:]
    base_y = (torch.arange(out_h) * 2).view(1, -1, 1).float()
    base_x = (torch.arange(out_w) * 2).view(1, 1, -1).float()
    out = layer.bias.view(1, -1, 1, 1).expand(batch, -1, out_h, out_w).clone()
    for i in range(2):
        for j in range(2):
            tap = i * 2 + j
            sample_y = base_y + i + offsets[:, 2 * tap]
            sample_x = base_x + j + offsets[:, 2 * tap + 1]
            grid = torch.stack([sample_x / (width - 1) * 2 - 1, sample_y / (height - 1) * 2 - 1], dim=-1)
            sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
            out = out + torch.einsum("oc,bchw->bohw", layer.weight[:, :, i, j], sampled)
    return out


def test_learned_offsets_follow_the_official_sampling_rule():
    torch.manual_seed(0)
    layer = DeformConv2d(4, 6, kernel_size=2, stride=2)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(std=0.5)
        layer.conv_offset.bias.normal_(std=1.0)
    x = torch.randn(2, 4, 7, 10)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _sample_official_rule(layer, x), atol=1e-5, rtol=1e-5)


def test_offsets_receive_gradients():
    layer = DeformConv2d(3, 4, kernel_size=2, stride=2)
    layer(torch.randn(1, 3, 6, 6)).sum().backward()
    assert layer.conv_offset.weight.grad is not None and layer.conv_offset.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("backend", ["torchvision", "reference"], ids=["torchvision_in_float32", "sampled"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision(dtype, backend):
    torch.manual_seed(0)
    layer = DeformConv2d(4, 8, kernel_size=2, stride=2)
    x = torch.randn(1, 4, 6, 6)
    expected = layer(x)
    offset = layer.conv_offset.to(dtype)(x.to(dtype))
    # torchvision's kernel runs on CUDA and in exported graphs; calling it here tests its float32 round trip.
    layer = layer.to(dtype)
    actual = deform_conv2d.implementation(backend)(x.to(dtype), offset, layer.weight, layer.bias, 2, 0, 1)
    assert actual.dtype == dtype
    torch.testing.assert_close(actual.float(), expected, atol=5e-2, rtol=5e-2)


def test_cpu_runs_the_sampled_form_and_export_keeps_torchvisions_op():
    layer = DeformConv2d(4, 8, kernel_size=2, stride=2)
    x = torch.randn(2, 4, 6, 6)
    program = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "torchvision.deform_conv2d.default" in targets and "aten.grid_sampler.default" not in targets
    with record_backends() as ran:
        eager = layer(x)
    assert ran == {"deform_conv2d": [REFERENCE]}
    torch.testing.assert_close(eager, program.module()(x), atol=1e-5, rtol=1e-5)


def test_portable_export_samples_with_grid_sample():
    layer = DeformConv2d(4, 8, kernel_size=2, stride=2)
    x = torch.randn(2, 4, 6, 6)
    with portable_only():
        program = torch.export.export(layer, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert "aten.grid_sampler.default" in targets and "torchvision.deform_conv2d.default" not in targets
    torch.testing.assert_close(layer(x), program.module()(x), atol=1e-5, rtol=1e-5)


def test_builds_on_meta_device():
    layer = DeformConv2d(4, 8, kernel_size=2, stride=2, device="meta")
    assert layer.weight.is_meta and layer.conv_offset.weight.is_meta


def test_fx_traces_the_layer_with_the_op_as_one_node():
    layer = DeformConv2d(4, 8, kernel_size=2, stride=2)
    with torch.no_grad():
        layer.conv_offset.weight.normal_(std=0.5)
    traced = torch.fx.symbolic_trace(layer)
    assert [node.target for node in traced.graph.nodes if node.op == "call_function"] == [deform_conv2d]
    x = torch.randn(1, 4, 7, 5)
    torch.testing.assert_close(traced(x), layer(x))
