"""vz_s2aformer_*: the sheet's exact counts (params, MACs at 224 and 256), the key manifest, any input size, the
layer's BatchNorm against nn.BatchNorm2d, the deploy form and the checkpoint filter."""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from visionzoo.bench.flops import count_macs
from visionzoo.layers.fuse import fuse_model
from visionzoo.layers.strip_attention import HybridPerceptionBlock, StripSelfAttention
from visionzoo.models.s2aformer import checkpoint_filter_fn
from visionzoo.ops import REFERENCE, use_backend

MANIFESTS = Path(__file__).resolve().parents[1] / "data" / "s2aformer"
# shared/specs/s2aformer.md §5.3: exact parameters and MACs (FlopCounterMode / 2) of the budget-fitted design.
SPEC = {
    "mini": (5_024_164, 0.4332, 0.5717),
    "t": (5_858_184, 0.6514, 0.8598),
    "xs": (6_433_112, 0.7812, 1.0318),
    "s": (10_771_272, 1.3846, 1.8181),
    "m": (24_693_400, 4.0965, 5.3768),
}
# Published (second-hand, spec §2) params in millions and GMACs at 224 / 256: the design sits within 2.2 %.
PAPER = {
    "mini": (5.02, 0.43, 0.56), "t": (5.80, 0.655, 0.855), "xs": (6.54, 0.786, 1.03),
    "s": (10.69, 1.38, 1.80), "m": (24.87, 4.12, 5.38),
}


def _slow_unless_mini(names):
    return [name if name == "mini" else pytest.param(name, marks=pytest.mark.slow) for name in names]


def _manifest(path: Path) -> dict[str, tuple[int, ...]]:
    rows = (line.split("\t") for line in path.read_text().splitlines() if line.strip())
    return {key: tuple(int(dim) for dim in shape.split(",") if dim) for key, shape in rows}


@pytest.mark.parametrize("variant", _slow_unless_mini(list(SPEC)))
def test_exact_params_and_macs_of_the_sheet_and_within_the_published_budget(variant):
    model = timm.create_model(f"vz_s2aformer_{variant}", device="meta")
    params = sum(p.numel() for p in model.parameters())
    macs = [count_macs(model, (3, size, size)) / 1e9 for size in (224, 256)]
    assert params == SPEC[variant][0]
    assert [round(value, 4) for value in macs] == list(SPEC[variant][1:])
    paper = PAPER[variant]
    assert abs(params / 1e6 / paper[0] - 1) < 0.022
    assert all(abs(ours / theirs - 1) < 0.022 for ours, theirs in zip(macs, paper[1:]))


def test_state_dict_matches_the_key_manifest():
    model = timm.create_model("vz_s2aformer_mini", device="meta")
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == _manifest(
        MANIFESTS / "vz_s2aformer_mini.tsv"
    )


@pytest.mark.parametrize("variant", _slow_unless_mini(list(SPEC)))
@pytest.mark.parametrize("size", [(224, 224), (256, 256), (160, 160), (320, 192), (97, 131), (16, 16), (1, 7)])
def test_any_input_size(variant, size):
    """Stage maps are ceil(H / 2^k); SSA pads maps not divisible by (or smaller than) r: 16x16 gives a 4x4 first
    stage map under r = 8, 97x131 gives 25x33."""
    torch.manual_seed(0)
    model = timm.create_model(f"vz_s2aformer_{variant}").eval()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        features = model.forward_intermediates(x, intermediates_only=True)
        logits = model(x)
    expected = [(-(-size[0] // 2**k), -(-size[1] // 2**k)) for k in (2, 3, 4, 5)]
    assert [tuple(f.shape[-2:]) for f in features] == expected
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()


def test_reference_and_fast_path_agree_inside_the_model():
    torch.manual_seed(0)
    model = timm.create_model("vz_s2aformer_mini").eval()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        fast = model(x)
        with use_backend(REFERENCE):
            reference = model(x)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-4)


def _block_by_hand(block: HybridPerceptionBlock, x: torch.Tensor) -> torch.Tensor:
    """The HPB spelled out with the modules' own layers (nn.BatchNorm2d included) and plain softmax attention."""
    attn = block.attn
    x = x + block.dwconv(x)
    y = block.norm1(x)
    batch, channels, height, width = y.shape
    padded = F.pad(y, (0, -width % attn.reduction, 0, -height % attn.reduction))
    reduced = attn.sr_norm(attn.sr(padded))
    heads = attn.num_heads
    q = attn.q(y).flatten(2).reshape(batch, heads, -1, height * width).transpose(-2, -1)
    k = attn.k(reduced).flatten(2).reshape(batch, heads, q.shape[-1], -1).transpose(-2, -1)
    v = attn.v(reduced).flatten(2).reshape(batch, heads, channels // heads, -1).transpose(-2, -1)
    out = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5, dim=-1) @ v
    x = x + attn.proj(out.transpose(-2, -1).reshape(batch, channels, height, width))
    x = x + block.lim(block.norm2(x))
    return x + block.mlp(block.norm3(x))


@pytest.mark.parametrize("training", [False, True])
def test_block_equals_its_modules_spelled_out_and_updates_batchnorm_statistics(training):
    torch.manual_seed(0)
    block = HybridPerceptionBlock(16, 8, 2, reduction=4).train(training)
    twin = HybridPerceptionBlock(16, 8, 2, reduction=4).train(training)
    twin.load_state_dict(block.state_dict())
    with torch.no_grad():
        block.attn.sr_norm.running_var.uniform_(0.5, 1.5)
        twin.attn.sr_norm.running_var.copy_(block.attn.sr_norm.running_var)
    x = torch.randn(3, 16, 11, 6)
    torch.testing.assert_close(block(x), _block_by_hand(twin, x), rtol=1e-5, atol=1e-5)
    # The op updated the layer's running statistics exactly as nn.BatchNorm2d did on the twin.
    for name, value in twin.attn.sr_norm.state_dict().items():
        torch.testing.assert_close(block.attn.sr_norm.state_dict()[name], value, msg=name)


def test_attention_layer_rejects_widths_that_do_not_split_into_heads():
    with pytest.raises(ValueError, match="divisible by num_heads 3"):
        StripSelfAttention(16, 8, 3, reduction=2)


def test_deploy_form_folds_the_reduction_batchnorm():
    torch.manual_seed(0)
    model = timm.create_model("vz_s2aformer_mini").eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    deployed = fuse_model(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in deployed.stages.modules())
    x = torch.randn(1, 3, 97, 131)
    with torch.no_grad():
        torch.testing.assert_close(deployed(x), model(x), rtol=1e-4, atol=1e-4)


def test_checkpoint_filter_unwraps_training_checkpoints():
    model = timm.create_model("vz_s2aformer_mini")
    state = model.state_dict()
    wrapped = {"model": {f"module.{key}": value for key, value in state.items()}}
    converted = checkpoint_filter_fn(wrapped, model)
    assert converted.keys() == state.keys()
    assert all(converted[key] is state[key] for key in state)
