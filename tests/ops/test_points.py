"""Point ops: each fast path equals its reference (hypothesis over batch 1, N not a power of two, duplicate points,
radii that hold only the centre), and the references follow the determinism rules of specs/gpsformer.md §7."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from visionzoo.ops import REFERENCE
from visionzoo.ops.points import (
    KNN_CHUNK,
    ball_query,
    farthest_point_sample,
    index_points,
    knn_point,
    square_distance,
)


@st.composite
def clouds(draw, max_points=67):
    """(B, N, 3) clouds with B in 1..3, N in 5..max_points, some points duplicated, some on a coarse grid."""
    batch = draw(st.integers(1, 3))
    num_points = draw(st.integers(5, max_points))
    seed = draw(st.integers(0, 2**16))
    generator = torch.Generator().manual_seed(seed)
    xyz = torch.rand(batch, num_points, 3, generator=generator)
    if draw(st.booleans()):
        xyz = (xyz * 4).round() / 4  # a grid: many equal distances
    duplicates = draw(st.integers(0, num_points // 2))
    if duplicates:
        source = torch.randint(num_points, (duplicates,), generator=generator)
        xyz[:, num_points - duplicates:] = xyz[:, source]
    return xyz


def _brute_distance(a, b):
    return (a.double()[:, :, None] - b.double()[:, None]).square().sum(-1)


@settings(max_examples=40, deadline=None)
@given(xyz=clouds(), fraction=st.floats(0.05, 1.0))
def test_fps_fast_path_equals_reference(xyz, fraction):
    count = max(1, int(xyz.shape[1] * fraction))
    expected = farthest_point_sample(xyz, count, backend=REFERENCE)
    assert torch.equal(farthest_point_sample(xyz, count, backend="custom_op"), expected)
    assert expected[:, 0].eq(0).all(), "FPS starts at index 0"
    # Each pick is a farthest remaining point, the lowest index among equally far ones.
    distance = _brute_distance(xyz, xyz)
    for b in range(xyz.shape[0]):
        for step in range(1, count):
            nearest = distance[b, expected[b, :step]].min(0).values
            assert expected[b, step] == int(torch.nonzero(nearest == nearest.max())[0])


@settings(max_examples=40, deadline=None)
@given(xyz=clouds(), k=st.integers(1, 5), stride=st.integers(1, 4))
def test_knn_fast_path_equals_reference_and_orders_by_distance_then_index(xyz, k, stride):
    query = xyz[:, ::stride]
    expected = knn_point(k, xyz, query, backend=REFERENCE)
    assert torch.equal(knn_point(k, xyz, query, backend="topk"), expected)
    distance = square_distance(query, xyz)
    kept = distance.gather(-1, expected)
    later = kept[..., 1:], expected[..., 1:]
    earlier = kept[..., :-1], expected[..., :-1]
    assert ((later[0] > earlier[0]) | ((later[0] == earlier[0]) & (later[1] > earlier[1]))).all()
    worst_kept = distance.gather(-1, expected[..., -1:])
    assert (distance.lt(worst_kept).sum(-1) <= k - 1).all()


@settings(max_examples=40, deadline=None)
@given(xyz=clouds(), radius=st.sampled_from([1e-6, 0.1, 0.3, 0.6, 3.0]), count=st.integers(1, 5))
def test_ball_query_fast_path_equals_reference_and_keeps_lowest_indices(xyz, radius, count):
    centres = xyz[:, ::3]
    expected = ball_query(radius, count, xyz, centres, backend=REFERENCE)
    assert torch.equal(ball_query(radius, count, xyz, centres, backend="topk"), expected)
    distance = square_distance(centres, xyz)
    inside = distance <= radius * radius
    for b in range(xyz.shape[0]):
        for s in range(centres.shape[1]):
            # The expansion may put a centre a rounding error away from itself: then the nearest point stands in.
            hits = torch.nonzero(inside[b, s]).flatten()[:count].tolist() or [int(distance[b, s].argmin())]
            assert expected[b, s].tolist() == hits + [hits[0]] * (count - len(hits))


def test_ball_that_captures_only_its_centre_repeats_it():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 2, 0], [3, 3, 3], [0, 0, 5]]])
    for backend in (REFERENCE, "topk"):
        out = ball_query(0.5, 4, xyz, xyz[:, [3, 1]], backend=backend)
        assert out.tolist() == [[[3, 3, 3, 3], [1, 1, 1, 1]]]


def test_empty_ball_falls_back_to_the_nearest_point():
    xyz = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [2, 0, 0]]])
    centre = torch.tensor([[[1.9, 0.0, 0.0]]])
    for backend in (REFERENCE, "topk"):
        assert ball_query(0.01, 2, xyz, centre, backend=backend).tolist() == [[[2, 2]]]


def test_fps_random_start_follows_the_generator():
    xyz = torch.rand(4, 50, 3, generator=torch.Generator().manual_seed(0))
    first = farthest_point_sample(xyz, 8, True, torch.Generator().manual_seed(3))
    again = farthest_point_sample(xyz, 8, True, torch.Generator().manual_seed(3))
    reference = farthest_point_sample(xyz, 8, True, torch.Generator().manual_seed(3), backend=REFERENCE)
    assert torch.equal(first, again) and torch.equal(first, reference)
    assert first[:, 0].ne(0).any()


def test_fps_ignores_extra_channels_and_compiles_as_one_node():
    xyz = torch.rand(2, 40, 6, generator=torch.Generator().manual_seed(1))
    expected = farthest_point_sample(xyz[..., :3].contiguous(), 10)
    assert torch.equal(farthest_point_sample(xyz, 10), expected)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: farthest_point_sample(x, 10), backend="aot_eager", fullgraph=True)
    assert torch.equal(compiled(xyz), expected)


def test_knn_chunks_large_query_sets_exactly():
    xyz = (torch.rand(1, KNN_CHUNK + 77, 3, generator=torch.Generator().manual_seed(2)) * 8).round()
    expected = knn_point(4, xyz, xyz, backend=REFERENCE)
    assert torch.equal(knn_point(4, xyz, xyz, backend="topk"), expected)


def test_index_points_gathers_and_passes_gradients():
    x = torch.randn(2, 7, 4, requires_grad=True)
    idx = torch.tensor([[[0, 6], [3, 3]], [[1, 2], [5, 0]]])
    out = index_points(x, idx)
    assert out.shape == (2, 2, 2, 4)
    assert torch.equal(out[1, 0, 1], x[1, 2])
    out.sum().backward()
    assert x.grad[0, 3].eq(2).all() and x.grad[0, 4].eq(0).all()


def test_square_distance_matches_brute_force_and_never_goes_negative():
    a = torch.randn(2, 9, 5) * 100
    assert torch.allclose(square_distance(a, a).double(), _brute_distance(a, a), rtol=1e-4, atol=1e-1)
    assert (square_distance(a, a) >= 0).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: farthest_point_sample(torch.rand(1, 5, 3), 6), "cannot sample 6 points from clouds of 5"),
        (lambda: farthest_point_sample(torch.rand(5, 3), 2), r"\(B, N, 3\)"),
        (lambda: knn_point(3, torch.rand(1, 5, 3), torch.rand(2, 2, 3)), r"queries \(B, S, C\)"),
        (lambda: ball_query(0.1, 9, torch.rand(1, 5, 3), torch.rand(1, 2, 3)), "cannot take 9 neighbours"),
    ],
)
def test_bad_arguments_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
