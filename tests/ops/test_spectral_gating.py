"""Spectral gating: every backend computes the reference (odd and even grids, batch 1, reduced-precision input,
gradients), the reference is the FFT filter it claims to be, export's portable mode avoids FFT ops, and the
filter resampling rule keeps what it promises."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops import REFERENCE, portable_only, record_backends
from visionzoo.ops.spectral_gating import resize_spectral_filter, spectral_gating

BACKENDS = [REFERENCE, *spectral_gating.backends]


@st.composite
def gating_calls(draw):
    batch = draw(st.integers(1, 3))
    height = draw(st.integers(1, 17))
    width = draw(st.integers(1, 17))
    channels = draw(st.integers(1, 6))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, height, width, channels, generator=generator).to(dtype)
    weight = torch.randn(height, width // 2 + 1, channels, 2, generator=generator)
    return x, weight


@settings(max_examples=60, deadline=None)
@given(gating_calls(), st.sampled_from(BACKENDS))
def test_every_backend_matches_the_reference(call, backend):
    x, weight = call
    expected = spectral_gating(x, weight, backend=REFERENCE)
    actual = spectral_gating(x, weight, backend=backend)
    assert actual.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=2e-5)


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 2), st.integers(1, 9), st.integers(1, 9), st.sampled_from(BACKENDS))
def test_gradients_match_the_reference(batch, height, width, backend):
    x = torch.randn(batch, height, width, 3, dtype=torch.float64)
    weight = torch.randn(height, width // 2 + 1, 3, 2, dtype=torch.float64)
    probe = torch.randn(batch, height, width, 3)
    grads = []
    for name in (REFERENCE, backend):
        leaves = (x.clone().requires_grad_(), weight.clone().requires_grad_())
        (spectral_gating(*leaves, backend=name) * probe).sum().backward()
        grads.append([leaf.grad for leaf in leaves])
    for expected, actual in zip(*grads):
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_reference_is_the_orthonormal_fourier_filter():
    """A unit filter is the identity; a filter holding one frequency's gain scales that cosine alone."""
    x = torch.randn(2, 6, 7, 3)
    unit = torch.zeros(6, 4, 3, 2)
    unit[..., 0] = 1.0
    torch.testing.assert_close(spectral_gating(x, unit, backend=REFERENCE), x, rtol=1e-5, atol=1e-5)
    rows, cols = torch.meshgrid(torch.arange(6.0), torch.arange(7.0), indexing="ij")
    wave = torch.cos(2 * torch.pi * (rows / 6 + 2 * cols / 7))[None, :, :, None].expand(1, 6, 7, 3)
    gain = unit.clone()
    gain[1, 2, :, 0] = 3.0  # scales the (1, 2) bin; its mirror (5, -2) lives in the implied half
    out = spectral_gating(wave.contiguous(), gain, backend="dft_matmul")
    torch.testing.assert_close(out, 3.0 * wave, rtol=1e-4, atol=1e-4)


def test_export_mode_runs_the_matmul_path_and_eager_the_fft():
    x, weight = torch.randn(1, 5, 6, 2), torch.randn(5, 4, 2, 2)
    with record_backends() as ran:
        spectral_gating(x, weight)
        with portable_only():
            spectral_gating(x, weight)
    assert ran == {"spectral_gating": ["fft", "dft_matmul"]}


def test_matmul_path_keeps_float32_under_autocast():
    x, weight = torch.randn(1, 8, 8, 4), torch.randn(8, 5, 4, 2)
    expected = spectral_gating(x, weight, backend=REFERENCE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actual = spectral_gating(x.bfloat16(), weight, backend="dft_matmul")
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual, spectral_gating(x.bfloat16(), weight, backend=REFERENCE))
    assert (actual - expected).abs().max() < 0.1  # only the bf16 rounding of the input differs


def test_wrong_filter_shape_says_what_it_needs():
    with pytest.raises(ValueError, match=r"needs a filter of shape \(14, 8, 4, 2\).*resize_spectral_filter"):
        spectral_gating(torch.randn(1, 14, 14, 4), torch.randn(14, 7, 4, 2))


def test_resizing_to_the_trained_grid_is_the_identity():
    weight = torch.randn(14, 8, 3, 2)
    assert resize_spectral_filter(weight, (14, 14), (14, 14)) is weight


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 20), st.integers(1, 20))
def test_resized_filter_has_the_new_grids_shape_and_keeps_constants(height, width, old_height, old_width):
    constant = torch.full((old_height, old_width // 2 + 1, 2, 2), 0.3)
    resized = resize_spectral_filter(constant, (height, width), (old_height, old_width))
    assert resized.shape == (height, width // 2 + 1, 2, 2)
    torch.testing.assert_close(resized, torch.full_like(resized, 0.3))


def test_resize_keeps_the_gain_at_shared_frequencies_and_interpolates_between():
    """14 → 28 rows and cols: bin 2u of the new grid has the frequency of old bin u, the odd ones lie halfway."""
    weight = torch.randn(14, 8, 1, 2)
    resized = resize_spectral_filter(weight, (28, 28), (14, 14))
    torch.testing.assert_close(resized[::2, ::2], weight)
    torch.testing.assert_close(resized[1, 2], (weight[0, 1] + weight[1, 1]) / 2)
    torch.testing.assert_close(resized[27, 0], (weight[13, 0] + weight[0, 0]) / 2)  # wraps around


def test_resize_refuses_a_filter_from_another_grid_and_an_empty_grid():
    with pytest.raises(ValueError, match="does not belong to the trained grid 14x14"):
        resize_spectral_filter(torch.randn(14, 7, 3, 2), (10, 10), (14, 14))
    with pytest.raises(ValueError, match="at least 1x1 tokens"):
        resize_spectral_filter(torch.randn(14, 8, 3, 2), (0, 10), (14, 14))


def test_exported_graphs_hold_no_fft_or_complex_ops():
    """torch.export (what every export format starts from) takes the matmul path even outside portable mode."""

    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(6, 4, 3, 2))

        def forward(self, x):
            return spectral_gating(x, self.weight)

    x = torch.randn(1, 6, 7, 3)
    program = torch.export.export(Gate(), (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("fft" in target or "complex" in target for target in targets), targets
    torch.testing.assert_close(program.module()(x), spectral_gating(x, program.module().weight, backend=REFERENCE))
