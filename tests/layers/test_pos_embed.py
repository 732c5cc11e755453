"""Grid-embedding resampling: the constant-weight export path equals antialiased bicubic interpolation."""
from __future__ import annotations

from unittest import mock

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.layers.pos_embed import aa_bicubic_weights, resample_grid_embed

sides = st.integers(1, 24)


def _interpolate(embed: torch.Tensor, new_grid, old_grid) -> torch.Tensor:
    batch, _, channels = embed.shape
    grid = embed.reshape(batch, *old_grid, channels).permute(0, 3, 1, 2)
    resampled = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    return resampled.permute(0, 2, 3, 1).reshape(batch, -1, channels)


@settings(max_examples=60, deadline=None)
@given(old_h=sides, old_w=sides, new_h=sides, new_w=sides, batch=st.integers(1, 2))
def test_constant_weight_resampling_equals_antialiased_bicubic(old_h, old_w, new_h, new_w, batch):
    generator = torch.Generator().manual_seed(old_h * 1000 + old_w * 100 + new_h * 10 + new_w)
    embed = torch.randn(batch, old_h * old_w, 5, generator=generator, dtype=torch.float64)
    expected = _interpolate(embed, (new_h, new_w), (old_h, old_w))
    with mock.patch.object(torch.compiler, "is_exporting", return_value=True):
        exported = resample_grid_embed(embed, (new_h, new_w), (old_h, old_w))
    torch.testing.assert_close(exported, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(resample_grid_embed(embed, (new_h, new_w), (old_h, old_w)), expected)


@given(in_size=sides, out_size=sides)
def test_weight_rows_are_normalised_and_the_same_size_is_identity(in_size, out_size):
    weights = torch.tensor(aa_bicubic_weights(in_size, out_size), dtype=torch.float64)
    assert weights.shape == (out_size, in_size)
    torch.testing.assert_close(weights.sum(1), torch.ones(out_size, dtype=torch.float64))
    same_size = torch.tensor(aa_bicubic_weights(in_size, in_size), dtype=torch.float64)
    torch.testing.assert_close(same_size, torch.eye(in_size, dtype=torch.float64))


def test_export_at_another_size_uses_only_core_aten_ops():
    embed = torch.randn(1, 196, 8)

    class Resample(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return resample_grid_embed(embed, (x.shape[-2], x.shape[-1]), (14, 14))

    x = torch.zeros(4, 6)
    program = torch.export.export(Resample(), (x,)).run_decompositions()
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("upsample" in target for target in targets), targets
    torch.testing.assert_close(program.module()(x), _interpolate(embed, (4, 6), (14, 14)))
