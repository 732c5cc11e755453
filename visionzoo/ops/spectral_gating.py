"""Spectral gating (GFNet, arXiv 2107.00645; SpectFormer, arXiv 2304.06446 §3.1): a learned per-frequency,
per-channel complex gain applied in the 2-D Fourier domain of a token map.

:func:`spectral_gating` takes a channels-last map ``x`` (B, H, W, C) and the filter ``weight``
(H, W // 2 + 1, C, 2) holding real and imaginary parts, and returns (B, H, W, C) in float32 (float64 for
float64 input):

    y = irfft2(rfft2(x) · (weight[..., 0] + i · weight[..., 1]), size (H, W))

with orthonormal scaling on both transforms, computed in float32 for every lower-precision input (the official
code casts to float32 and does not cast back). Odd and even grids both work; along the half axis the inverse
transform keeps only the real part of the zero-frequency bin (and of the Nyquist bin when W is even), as every
real inverse FFT does.

Backends: the reference runs ``torch.fft``, and is also registered as the ``fft`` backend so that it wins auto mode
wherever FFTs run (on 2 CPU cores it measured 1.2x faster than the matmuls at 14x14 and 2-3x faster at 28x28 and
56x56); ``dft_matmul`` computes the same function with real matrix products
against constant cosine/sine bases (one per axis, each way), so it exports to runtimes that have no FFT or
complex dtype (ExecuTorch, Core ML, onnxruntime builds without DFT): export's portable-only mode picks it, and
the ``fft`` backend steps aside in every ``torch.export`` trace, so ONNX files get it too. Its bases are built from the grid size in each
call from integer phases (n · k mod N), which keeps them exact to float32 rounding at any grid size.

:func:`resize_spectral_filter` resamples a filter learned on one grid to another (see its docstring).
"""
from __future__ import annotations

import math

import torch

from visionzoo.ops._dispatch import Op, Sample, seeded_randn


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[-1] != 2:
        raise ValueError(
            f"spectral_gating expects x (B, H, W, C) and weight (H, W // 2 + 1, C, 2), got x {tuple(x.shape)} "
            f"and weight {tuple(weight.shape)}"
        )
    _, height, width, channels = x.shape
    expected = (height, width // 2 + 1, channels, 2)
    if tuple(weight.shape) != expected:
        raise ValueError(
            f"spectral_gating: a {height}x{width} grid with {channels} channels needs a filter of shape {expected}, "
            f"got {tuple(weight.shape)}; resample it with resize_spectral_filter"
        )


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def spectral_gating_reference(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """rfft2 (orthonormal, float32) → multiply by the complex filter → irfft2 back to the (H, W) grid."""
    _check(x, weight)
    height, width = x.shape[1:3]
    dtype = _compute_dtype(x)
    spectrum = torch.fft.rfft2(x.to(dtype), dim=(1, 2), norm="ortho")
    # Built from its two halves rather than view_as_complex, which needs a contiguous last axis of 2.
    spectrum = spectrum * torch.complex(weight[..., 0].to(dtype), weight[..., 1].to(dtype))
    return torch.fft.irfft2(spectrum, s=(height, width), dim=(1, 2), norm="ortho")


spectral_gating = Op("spectral_gating", spectral_gating_reference)


def _not_exporting(x: torch.Tensor, weight: torch.Tensor) -> bool:
    # Every exported graph takes the matmul path, ONNX's too: ONNX has a DFT node, but onnxruntime builds differ
    # in accepting it (pytorch issues #164698, #188496), while MatMul runs everywhere.
    return not torch.compiler.is_exporting()


spectral_gating.register("fft", priority=20, portable=False, supports=_not_exporting)(spectral_gating_reference)


@spectral_gating.sample_inputs
def _samples() -> list[Sample]:
    randn = seeded_randn()
    return [
        Sample("batch 1, odd 7x5 grid, 3 channels", (randn(1, 7, 5, 3), randn(7, 3, 3, 2))),
        Sample("batch 2, even 6x8 grid, 4 channels", (randn(2, 6, 8, 4), randn(6, 5, 4, 2))),
        Sample("batch 2, 14x14 grid (vanilla SpectFormer)", (randn(2, 14, 14, 8), randn(14, 8, 8, 2))),
        Sample("bf16 input, 9x6 grid", (randn(2, 9, 6, 5).bfloat16(), randn(9, 4, 5, 2))),
    ]


def _phases(size: int, bins: int, like: torch.Tensor) -> torch.Tensor:
    """2π · (n · k mod size) / size for n < size, k < bins, in ``like``'s dtype (the modulo keeps large grids
    exact)."""
    n = torch.arange(size, device=like.device)
    k = torch.arange(bins, device=like.device)
    return (torch.outer(n, k) % size).to(like.dtype) * (2 * math.pi / size)


def _half_axis_bases(width: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (W, 2K) and inverse (2K, W) real bases of the orthonormal real DFT along an axis of ``width``.

    Forward: [Re | Im] = x @ [cos | -sin] / √W. Inverse: x[n] = Σ_k c_k (Re_k cos − Im_k sin) / √W with
    c_k = 1 for the zero and Nyquist bins and 2 otherwise (each other bin stands for itself and its mirror).
    """
    bins = width // 2 + 1
    phase = _phases(width, bins, like)
    scale = 1.0 / math.sqrt(width)
    forward = torch.cat([phase.cos(), -phase.sin()], dim=1) * scale
    multiplicity = torch.full((bins,), 2.0, device=like.device, dtype=like.dtype)
    multiplicity[0] = 1.0
    if width % 2 == 0:
        multiplicity[-1] = 1.0
    inverse = torch.cat([phase.cos().T, -phase.sin().T], dim=0) * (multiplicity.repeat(2)[:, None] * scale)
    return forward, inverse


def _full_axis_basis(height: int, sign: float, like: torch.Tensor) -> torch.Tensor:
    """(2H, 2H) real matrix of the orthonormal complex DFT along an axis of ``height`` acting on [Re; Im]
    stacked along that axis; ``sign`` −1 is the forward transform, +1 the inverse."""
    phase = _phases(height, height, like)
    cos, sin = phase.cos(), phase.sin() * sign
    return torch.cat([torch.cat([cos, -sin], dim=1), torch.cat([sin, cos], dim=1)], dim=0) / math.sqrt(height)


def _dft_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    batch, height, width, channels = x.shape
    bins = width // 2 + 1
    x = x.to(_compute_dtype(x))
    half_forward, half_inverse = _half_axis_bases(width, x)
    # Half axis: (B, H, C, W) @ (W, 2K) → real and imaginary parts, then stacked along H as (B, 2H, C·K).
    spectrum = x.permute(0, 1, 3, 2) @ half_forward
    spectrum = spectrum.reshape(batch, height, channels, 2, bins).permute(0, 3, 1, 2, 4)
    spectrum = spectrum.reshape(batch, 2 * height, channels * bins)
    spectrum = _full_axis_basis(height, -1.0, x) @ spectrum
    real, imag = spectrum.reshape(batch, 2, height, channels, bins).unbind(1)
    gain = weight.to(x.dtype).permute(3, 0, 2, 1)  # (2, H, C, K)
    gain_real, gain_imag = gain[0], gain[1]
    gated = torch.stack([real * gain_real - imag * gain_imag, real * gain_imag + imag * gain_real], dim=1)
    gated = _full_axis_basis(height, 1.0, x) @ gated.reshape(batch, 2 * height, channels * bins)
    gated = gated.reshape(batch, 2, height, channels, bins).permute(0, 2, 3, 1, 4)
    out = gated.reshape(batch, height, channels, 2 * bins) @ half_inverse
    return out.permute(0, 1, 3, 2)


@spectral_gating.register("dft_matmul", priority=10, portable=True)
def _spectral_gating_dft_matmul(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    _check(x, weight)
    device_type = x.device.type
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):  # the filter is float32 math, as the reference's FFT is
        with torch.autocast(device_type, enabled=False):
            return _dft_matmul(x, weight)
    return _dft_matmul(x, weight)


def _periodic_interpolation(new_size: int, old_size: int, device: torch.device) -> torch.Tensor:
    """(new, old) matrix interpolating linearly, with wrap-around, between the bins of a full DFT axis: new bin
    u sits at frequency fftfreq(new)[u], read from the old bins at the same frequency (period one cycle)."""
    bins = torch.arange(new_size, device=device)
    signed = torch.where(bins < (new_size + 1) // 2, bins, bins - new_size)  # fftfreq(new) · new, without FFT ops
    position = torch.remainder(signed.float() * (old_size / new_size), old_size)
    return _linear_rows(position, old_size, wrap=True)


def _half_interpolation(new_width: int, old_width: int, device: torch.device) -> torch.Tensor:
    """(new_bins, old_bins) matrix interpolating linearly between the bins of the half axis at equal frequency
    k / W; frequencies past the old last bin (an odd old width has no Nyquist bin) take the last bin's value."""
    new_bins, old_bins = new_width // 2 + 1, old_width // 2 + 1
    position = torch.arange(new_bins, device=device).float() * (old_width / new_width)
    return _linear_rows(position.clamp(max=old_bins - 1), old_bins, wrap=False)


def _linear_rows(position: torch.Tensor, size: int, wrap: bool) -> torch.Tensor:
    below = position.floor()
    fraction = position - below
    below = below.long()
    above = torch.remainder(below + 1, size) if wrap else (below + 1).clamp(max=size - 1)
    rows = torch.zeros(position.shape[0], size, dtype=position.dtype, device=position.device)
    rows.scatter_add_(1, below[:, None], (1 - fraction)[:, None])
    rows.scatter_add_(1, above[:, None], fraction[:, None])
    return rows


def resize_spectral_filter(weight: torch.Tensor, grid: tuple[int, int], trained_grid: tuple[int, int]) -> torch.Tensor:
    """A filter (H, W // 2 + 1, C, 2) learned on the ``trained_grid`` (H, W), resampled for ``grid``.

    The rule: the filter is read as a frequency response sampled at the DFT bins of the training grid, and each
    new bin takes the response at its own frequency by linear interpolation between the two nearest old bins,
    independently along the two axes and for the real and imaginary parts. Along the full axis frequencies wrap
    (bin H−1 neighbours bin 0); along the half axis they run from 0 to the Nyquist frequency and a frequency past
    the last old bin takes its value. The same grid returns the filter itself; the rule serves every grid of at
    least one token per side, so only an empty grid is refused.
    """
    (height, width), (old_height, old_width) = grid, trained_grid
    if min(height, width) < 1:
        raise ValueError(f"a spectral filter needs a grid of at least 1x1 tokens, got {height}x{width}")
    if (old_height, old_width // 2 + 1) != tuple(weight.shape[:2]):
        raise ValueError(
            f"filter of shape {tuple(weight.shape)} does not belong to the trained grid {old_height}x{old_width}"
        )
    if (height, width) == (old_height, old_width):
        return weight
    rows = _periodic_interpolation(height, old_height, weight.device).to(weight.dtype)
    cols = _half_interpolation(width, old_width, weight.device).to(weight.dtype)
    return torch.einsum("ph,hwcz,qw->pqcz", rows, weight, cols)
