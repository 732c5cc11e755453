"""GPSFormer (specs/gpsformer.md §4-§5): exact counts of the zoo design, the layers' algebra, the point-cloud
input contract and the segmentation model."""
from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F

from visionzoo.layers.point_conv import ADGConv, GlobalPerceptionModule, HOConv, LSFConv
from visionzoo.models._checkpoint import load_checkpoint
from visionzoo.ops.points import index_points, knn_point


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _cloud(batch=2, points=160, dims=3, seed=0):
    return torch.randn(batch, points, dims, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "name, classes, params",
    [
        ("vz_gpsformer_cls", 40, 2_363_249), ("vz_gpsformer_cls", 15, 2_356_824),
        ("vz_gpsformer_elite_cls", 40, 680_273), ("vz_gpsformer_elite_cls", 15, 673_848),
    ],
)
def test_exact_parameter_counts_of_the_sheet(name, classes, params):
    assert _count(timm.create_model(name, num_classes=classes, device="meta")) == params


def test_stage_breakdown_of_the_classifier():
    model = timm.create_model("vz_gpsformer_cls", device="meta")
    assert _count(model.stem) == 320
    assert [_count(stage.gpm) for stage in model.stages] == [62_848, 248_576, 988_672]
    assert [_count(stage.lsf) for stage in model.stages] == [52_867, 204_035, 302_339]
    assert _count(model.pre_logits) + _count(model.head) == 503_592


@pytest.mark.parametrize("dim", [32, 48])
def test_layer_counts_follow_the_sheets_formulas(dim):
    assert _count(GlobalPerceptionModule(dim, device="meta")) == 15 * dim**2 + 22 * dim
    out_dim, width = 2 * dim, dim
    expected = 3 * (2 * dim * width + 18 * width + 1) + 3 * width * out_dim + 2 * out_dim
    assert _count(LSFConv(dim, out_dim, device="meta")) == expected


def test_adgconv_equals_the_explicit_edge_convolution():
    torch.manual_seed(0)
    layer = ADGConv(8, k=5).eval()
    with torch.no_grad():
        layer.bn.running_mean.uniform_(-0.5, 0.5)
        layer.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(2, 23, 8)
    shifted, aggregated = layer(x)
    neighbours = knn_point(5, x, shifted)
    centre = shifted.unsqueeze(2).expand(-1, -1, 5, -1)
    edges = torch.cat([index_points(x, neighbours) - centre, centre], dim=-1) @ layer.edge.weight.T
    expected = F.leaky_relu(layer.bn(edges), 0.2).amax(dim=2)
    torch.testing.assert_close(shifted, x + layer.offset(x))
    torch.testing.assert_close(aggregated, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode, signed, p, learnable", [
    ("learnable", 1, 1.0, True), ("abf", 1, 1.0, False), ("rbf", 0, 2.0, False), ("radial_learnable", 0, 1.0, True),
])
def test_hoconv_modes_set_the_basis(mode, signed, p, learnable):
    layer = HOConv(4, 6, mode)
    assert layer.signed == signed and float(layer.p.detach()) == p and isinstance(layer.p, torch.nn.Parameter) == learnable
    with pytest.raises(ValueError, match="HOConv mode must be one of"):
        HOConv(4, 6, "cubic")


def test_hoconv_clamps_p_and_learns_it():
    layer = HOConv(4, 6).train()
    features, weight = torch.randn(1, 9, 4), torch.rand(1, 3, 4, 6)
    centres, neighbours = torch.tensor([[0, 4, 8]]), torch.randint(9, (1, 3, 4))
    out = layer(features, centres, neighbours, weight)
    out.sum().backward()
    assert out.shape == (1, 3, 6) and layer.p.grad is not None
    with torch.no_grad():
        layer.p.fill_(7.0)
        clamped = layer(features, centres, neighbours, weight)
        layer.p.fill_(3.0)
        torch.testing.assert_close(clamped, layer(features, centres, neighbours, weight))


@pytest.fixture(scope="module")
def elite():
    return timm.create_model("vz_gpsformer_elite_cls", num_classes=5).eval()


@pytest.mark.parametrize("points", [128, 160, 251])
def test_batch_one_and_several_cloud_sizes(elite, points):
    with torch.no_grad():
        assert elite(_cloud(1, points)).shape == (1, 5)
        final, stages = elite.forward_intermediates(_cloud(2, points))
    assert [tuple(f.shape) for f in stages] == [
        (2, points // 2, 64), (2, points // 4, 128), (2, points // 8, 128)
    ]
    assert final.shape == (2, points // 8, elite.num_features)


def test_stage_coordinates_are_farthest_point_subsets(elite):
    x = _cloud(1, 160)
    with torch.no_grad():
        levels = elite.forward_intermediates_xyz(x)
    previous = x
    for xyz, features in levels:
        assert xyz.shape[1] == features.shape[1] == previous.shape[1] // 2
        assert torch.isin(xyz[0], previous[0]).all(dim=-1).all()
        assert torch.equal(xyz[0, 0], previous[0, 0])  # FPS starts at index 0
        previous = xyz


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.randn(2, 3, 160), r"channels-first \(B, C, N\): pass x.transpose\(1, 2\)"),
        (torch.randn(2, 100, 3), "needs at least 128 points"),
        (torch.randn(160, 3), "add a batch dimension"),
        (torch.randn(2, 160, 6), "in_chans=6"),
        (torch.randint(0, 5, (2, 160, 3)), "floating-point"),
    ],
)
def test_wrong_inputs_get_clear_errors(elite, x, message):
    with pytest.raises((ValueError, TypeError), match=message):
        elite(x)


def test_nan_coordinates_are_refused(elite):
    x = _cloud(1, 160)
    x[0, 7, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite coordinates"):
        elite(x)


def test_extra_point_channels_change_only_the_embedding():
    model = timm.create_model("vz_gpsformer_elite_cls", in_chans=6, num_classes=3).eval()
    base = timm.create_model("vz_gpsformer_elite_cls", num_classes=3, device="meta")
    assert _count(model) - _count(base) == 3 * 32
    with torch.no_grad():
        assert model(_cloud(2, 160, 6)).shape == (2, 3)
    with pytest.raises(ValueError, match="at least 3"):
        timm.create_model("vz_gpsformer_elite_cls", in_chans=2)


def test_training_checkpoint_round_trip_through_a_file(elite, tmp_path):
    path = tmp_path / "last.pth"
    torch.save({"model": {f"module.{k}": v for k, v in elite.state_dict().items()}}, path)
    clone = timm.create_model("vz_gpsformer_elite_cls", num_classes=5, checkpoint_path=str(path)).eval()
    x = _cloud(2, 160)
    with torch.no_grad():
        torch.testing.assert_close(clone(x), elite(x))


def test_random_start_draws_other_centres_in_training_only():
    model = timm.create_model("vz_gpsformer_elite_cls", random_start=True, num_classes=3)
    x = _cloud(1, 160)
    with torch.no_grad():
        model.eval()
        eval_xyz = model.forward_intermediates_xyz(x, indices=[0])[0][0]
        assert torch.equal(eval_xyz[0, 0], x[0, 0])
        model.train()
        torch.manual_seed(1)
        drawn = [model.forward_intermediates_xyz(x, indices=[0])[0][0][0, 0] for _ in range(4)]
    assert any(not torch.equal(point, x[0, 0]) for point in drawn)


@pytest.fixture(scope="module")
def partseg():
    return timm.create_model("vz_gpsformer_partseg", dims=(16, 16, 16, 16, 16), out_dims=(16, 16, 16, 16, 16),
                             embed_dim=16, decoder_dims=(16, 16, 16, 16, 16), k=8)


def test_partseg_gives_per_point_part_logits_and_uses_the_category(partseg):
    x = _cloud(2, 512)
    partseg.train()
    out = partseg(x, torch.tensor([0, 15]))
    assert out.shape == (2, 512, 50)
    out.mean().backward()
    missing = [n for n, p in partseg.named_parameters() if p.grad is None]
    assert not missing, missing[:5]
    partseg.eval()
    with torch.no_grad():
        airplane, table = partseg(x[:1], torch.tensor([0])), partseg(x[:1], torch.tensor([15]))
        unknown = partseg(x[:1])
    assert not torch.allclose(airplane, table) and unknown.shape == (1, 512, 50)


def test_partseg_full_size_builds_with_five_blocks():
    model = timm.create_model("vz_gpsformer_partseg", device="meta")
    assert len(model.stages) == 5 and [info["num_chs"] for info in model.feature_info] == [128, 256, 256, 512, 512]
    assert _count(model) == 10_176_833


@pytest.mark.slow
def test_partseg_compiles_in_one_graph(partseg):
    partseg.eval()
    x, category = _cloud(1, 512), torch.tensor([3])
    compiled = torch.compile(partseg, fullgraph=True, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, category), partseg(x, category), rtol=1e-4, atol=1e-4)


def test_checkpoint_loader_refuses_other_models(elite):
    wrong = {"stem.linear.weight": torch.zeros(1, 1)}
    with pytest.raises(Exception, match="stem.linear.weight|size mismatch|Missing"):
        load_checkpoint(timm.create_model("vz_gpsformer_elite_cls", num_classes=5), wrong)
