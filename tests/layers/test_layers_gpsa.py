"""GatedPositionalSelfAttention: ConViT's local init, grid handling, and agreement with timm's GPSA."""
import pytest
import torch

from visionzoo.layers.gpsa import GatedPositionalSelfAttention
from visionzoo.ops import use_backend


@pytest.mark.parametrize("heads, kernel_size", [(4, 2), (9, 3), (16, 4)])
def test_local_init_points_each_head_at_one_kernel_offset(heads, kernel_size):
    attn = GatedPositionalSelfAttention(heads * 4, heads, locality_strength=1.0)
    assert torch.equal(attn.v.weight, torch.eye(heads * 4))
    assert torch.equal(attn.pos_proj.bias, torch.zeros(heads))
    assert torch.equal(attn.gating_param, torch.ones(heads))
    center = (kernel_size - 1) / 2 if kernel_size % 2 == 0 else kernel_size // 2
    for h1 in range(kernel_size):
        for h2 in range(kernel_size):
            expected = [2 * (h2 - center), 2 * (h1 - center), -1.0]
            assert attn.pos_proj.weight[h1 + kernel_size * h2].tolist() == expected


def test_local_init_makes_odd_kernels_attend_to_their_offset():
    attn = GatedPositionalSelfAttention(36, 9, locality_strength=50.0, grid_size=(5, 5))
    positional = attn.positional_logits((5, 5)).softmax(-1)
    centre_query = 2 * 5 + 2
    for head in range(9):
        h1, h2 = head % 3, head // 3
        offset_x, offset_y = h2 - 1, h1 - 1
        target = (2 + offset_y) * 5 + (2 + offset_x)
        assert positional[head, centre_query].argmax().item() == target
        assert positional[head, centre_query, target] > 0.99


def test_local_init_matches_timm():
    from timm.models.convit import GPSA

    for heads in (4, 9, 16, 6):
        ours = GatedPositionalSelfAttention(heads * 2, heads, locality_strength=0.7)
        theirs = GPSA(heads * 2, num_heads=heads, locality_strength=0.7)
        theirs.local_init()
        kernel_heads = int(heads**0.5) ** 2
        torch.testing.assert_close(ours.pos_proj.weight[:kernel_heads], theirs.pos_proj.weight[:kernel_heads])
        assert torch.equal(ours.v.weight, theirs.v.weight)


def test_matches_timm_gpsa_with_same_weights():
    from timm.models.convit import GPSA

    torch.manual_seed(0)
    ours = GatedPositionalSelfAttention(24, 4, grid_size=(5, 5)).eval()
    theirs = GPSA(24, num_heads=4).eval()
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 25, 24)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, (5, 5)), theirs(x), rtol=1e-5, atol=1e-5)


def test_non_square_grid_fast_equals_reference_and_cache_equals_rebuild():
    torch.manual_seed(0)
    attn = GatedPositionalSelfAttention(16, 4, grid_size=(3, 5)).eval()
    with torch.no_grad():
        attn.gating_param.normal_()
    x = torch.randn(1, 15, 16)
    with torch.no_grad():
        fast = attn(x, (3, 5))
        with use_backend("reference"):
            reference = attn(x, (3, 5))
        rebuilt = GatedPositionalSelfAttention(16, 4, grid_size=(5, 3)).eval()
        rebuilt.load_state_dict(attn.state_dict())
        from_other_grid = rebuilt(x, (3, 5))
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(from_other_grid, fast, rtol=1e-6, atol=1e-6)


def test_token_count_must_match_grid():
    attn = GatedPositionalSelfAttention(16, 4)
    with pytest.raises(ValueError, match="15 tokens for a 4x4 grid"):
        attn(torch.randn(1, 15, 16), (4, 4))


def test_meta_construction_and_buffer_refill():
    attn = GatedPositionalSelfAttention(16, 4, grid_size=(2, 3), device="meta")
    assert attn.rel_pos.is_meta
    attn = attn.to_empty(device="cpu")
    attn.init_non_persistent_buffers()
    assert torch.equal(attn.rel_pos, GatedPositionalSelfAttention(16, 4, grid_size=(2, 3)).rel_pos)
    assert "rel_pos" not in attn.state_dict()
