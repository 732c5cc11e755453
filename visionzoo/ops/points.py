"""Point-cloud index ops in plain PyTorch: gather, squared distance, farthest point sampling, kNN and ball query.

PointNet++-style networks (GPSFormer, specs/gpsformer.md §7) usually need the compiled ``pointnet2_ops``
extension; these run on any device and are deterministic by construction:

* ``farthest_point_sample`` starts at index 0 (``random_start`` draws the start from a generator instead) and breaks
  ties of the running distance by the lowest index (``argmax`` returns the first maximum).
* ``knn_point`` orders neighbours by (distance, index): equal distances keep index order, on every backend.
* ``ball_query`` returns the **lowest-index** ``K`` points within the radius (``d² <= r²``), padded with the first
  of them; the centre of a ball cut from the same cloud is always inside.

Clouds are channels-last: ``xyz`` is (B, N, 3) and indices are int64. The three selection ops are index
computations without gradients; gradients reach features through :func:`index_points`.
"""
from __future__ import annotations

import torch

from visionzoo.ops._dispatch import Op, Sample, seeded_randn


def index_points(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Gather points: x (B, N, C) and idx (B, S) or (B, S, K) in [0, N) → (B, S[, K], C), differentiable in x."""
    batch, channels = x.shape[0], x.shape[-1]
    flat = idx.reshape(batch, -1, 1).expand(-1, -1, channels)
    return torch.gather(x, 1, flat).reshape(*idx.shape, channels)


def square_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances (B, S, C) × (B, N, C) → (B, S, N) by the ‖a‖² − 2ab + ‖b‖² expansion
    (one matmul), clamped at 0 because the expansion can round below it."""
    cross = torch.matmul(a, b.transpose(1, 2))
    return (a.square().sum(-1, keepdim=True) - 2 * cross + b.square().sum(-1).unsqueeze(1)).clamp_min_(0)


def _start_indices(xyz: torch.Tensor, random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    batch, num_points = xyz.shape[:2]
    if not random_start:
        return torch.zeros(batch, dtype=torch.long, device=xyz.device)
    return torch.randint(num_points, (batch,), generator=generator, device="cpu").to(xyz.device)


def _check_sample_count(xyz: torch.Tensor, num_samples: int) -> None:
    if xyz.dim() != 3 or xyz.shape[-1] < 3:
        raise ValueError(f"farthest_point_sample takes xyz of shape (B, N, 3), got {tuple(xyz.shape)}")
    if not 0 < num_samples <= xyz.shape[1]:
        raise ValueError(f"cannot sample {num_samples} points from clouds of {xyz.shape[1]}")


def _fps_reference(
    xyz: torch.Tensor, num_samples: int, random_start: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Farthest point sampling: (B, N, 3) → (B, num_samples) indices.

    Keep every point's squared distance to the picked set (initially +∞); pick the start, then repeatedly the
    point whose distance is largest (lowest index on ties). All clouds advance together, one step at a time, over
    contiguous coordinate planes (B, N); traced for export, the loop unrolls to ``num_samples`` steps."""
    _check_sample_count(xyz, num_samples)
    with torch.no_grad():
        return _fps_batched(xyz, num_samples, _start_indices(xyz, random_start, generator))


def _fps_batched(xyz: torch.Tensor, num_samples: int, starts: torch.Tensor) -> torch.Tensor:
    planes = xyz[..., :3].detach().permute(2, 0, 1).contiguous()
    batch, num_points = xyz.shape[:2]
    nearest = torch.full((batch, num_points), float("inf"), dtype=xyz.dtype, device=xyz.device)
    picked = []
    current = starts.view(batch, 1)
    for _ in range(num_samples):
        picked.append(current)
        centre = planes.gather(2, current.unsqueeze(0).expand(3, -1, -1))
        offset = planes - centre
        nearest = torch.minimum(nearest, offset[0] ** 2 + offset[1] ** 2 + offset[2] ** 2)
        current = nearest.argmax(1, keepdim=True)
    return torch.cat(picked, dim=1)


farthest_point_sample = Op("farthest_point_sample", _fps_reference)


@torch.library.custom_op("visionzoo::farthest_point_sample", mutates_args=())
def _fps_kernel(xyz: torch.Tensor, num_samples: int, starts: torch.Tensor) -> torch.Tensor:
    return _fps_batched(xyz, num_samples, starts)


@_fps_kernel.register_fake
def _(xyz: torch.Tensor, num_samples: int, starts: torch.Tensor) -> torch.Tensor:
    return xyz.new_empty(xyz.shape[0], num_samples, dtype=torch.long)


def _not_exporting(*args, **kwargs) -> bool:
    return not torch.compiler.is_exporting()


@farthest_point_sample.register("custom_op", priority=10, portable=False, differentiable=False,
                                supports=_not_exporting)
def _fps_custom_op(
    xyz: torch.Tensor, num_samples: int, random_start: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The same loop as one opaque ``torch.library`` op: ``torch.compile`` sees a single node instead of unrolling
    ``num_samples`` steps. Exporters trace the reference instead (its loop unrolls at the fixed N of the export)."""
    _check_sample_count(xyz, num_samples)
    return _fps_kernel(xyz.detach(), num_samples, _start_indices(xyz, random_start, generator))


def _check_query(name: str, xyz: torch.Tensor, centres: torch.Tensor, count: int) -> None:
    if xyz.dim() != 3 or centres.dim() != 3 or xyz.shape[0] != centres.shape[0] or xyz.shape[2] != centres.shape[2]:
        raise ValueError(
            f"{name} takes points (B, N, C) and queries (B, S, C), got {tuple(xyz.shape)} and {tuple(centres.shape)}"
        )
    if not 0 < count <= xyz.shape[1]:
        raise ValueError(f"{name}: cannot take {count} neighbours from {xyz.shape[1]} points")


def _knn_reference(k: int, xyz: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """The ``k`` nearest points of every query by squared distance, ordered by (distance, index): (B, S, k)."""
    _check_query("knn_point", xyz, query, k)
    with torch.no_grad():
        distance = square_distance(query, xyz)
        return distance.sort(dim=-1, stable=True).indices[..., :k]


knn_point = Op("knn_point", _knn_reference)

# Queries per chunk of the fast kNN: bounds the (chunk, N) distance block for large clouds.
KNN_CHUNK = 1024


def _first_k_selected(selected: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the first ``k`` True entries along the last dim (each row holds at least ``k``), in index order,
    through a running count and a scatter instead of a sort; rows with more keep only the first ``k``."""
    rank = selected.cumsum(-1) - 1
    slot = torch.where(selected & (rank < k), rank, torch.full_like(rank, k))
    positions = torch.arange(selected.shape[-1], device=selected.device).expand_as(selected)
    out = torch.zeros(*selected.shape[:-1], k + 1, dtype=torch.long, device=selected.device)
    return out.scatter_(-1, slot, positions)[..., :k]


def _knn_chunk(k: int, xyz: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    distance = square_distance(query, xyz)
    kth = distance.topk(k, dim=-1, largest=False).values[..., -1:]
    # topk picks arbitrarily among points tied at the k-th distance; keep the lowest-index ones, then order the k
    # winners by (distance, index) with a stable sort of k values.
    below = distance < kth
    ties_allowed = k - below.sum(-1, keepdim=True)
    at_kth = distance == kth
    selected = below | (at_kth & (at_kth.cumsum(-1) <= ties_allowed))
    winners = _first_k_selected(selected, k)
    # Order the k winners (in index order now) by distance, ties by position: each one's rank is the number of
    # winners before it in that order; k² comparisons, and no sort (which ONNX cannot express stably).
    kept = distance.gather(-1, winners)
    before = (kept.unsqueeze(-1) < kept.unsqueeze(-2)) | (
        (kept.unsqueeze(-1) == kept.unsqueeze(-2)) & torch.ones(k, k, dtype=torch.bool, device=kept.device).triu(1)
    )
    rank = before.sum(-2)
    return torch.zeros_like(winners).scatter_(-1, rank, winners)


@knn_point.register("topk", priority=10, portable=True, differentiable=False)
def _knn_topk(k: int, xyz: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """topk over query chunks of at most ``KNN_CHUNK`` rows, with the reference's (distance, index) order."""
    _check_query("knn_point", xyz, query, k)
    with torch.no_grad():
        if query.shape[1] <= KNN_CHUNK:
            return _knn_chunk(k, xyz, query)
        return torch.cat([_knn_chunk(k, xyz, chunk) for chunk in query.split(KNN_CHUNK, dim=1)], dim=1)


def _ball_query_reference(radius: float, num_neighbors: int, xyz: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The lowest-index ``num_neighbors`` points within ``radius`` of each centre, (B, S, K); a ball with fewer
    repeats its first point, and an empty ball (a centre not from the cloud) falls back to the nearest point."""
    _check_query("ball_query", xyz, centres, num_neighbors)
    with torch.no_grad():
        num_points = xyz.shape[1]
        distance = square_distance(centres, xyz)
        index = torch.arange(num_points, device=xyz.device).expand_as(distance)
        index = index.masked_fill(distance > radius * radius, num_points)
        index = index.sort(dim=-1).values[..., :num_neighbors]
        first = index[..., :1]
        first = torch.where(first == num_points, distance.argmin(-1, keepdim=True), first)
        return torch.where(index == num_points, first.expand_as(index), index)


ball_query = Op("ball_query", _ball_query_reference)


@ball_query.register("topk", priority=10, portable=True, differentiable=False)
def _ball_query_topk(radius: float, num_neighbors: int, xyz: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """The reference with a top-K of the masked indices in place of its sort over N: indices are distinct, so
    there are no ties to break, and top-K returns them ascending."""
    _check_query("ball_query", xyz, centres, num_neighbors)
    with torch.no_grad():
        num_points = xyz.shape[1]
        distance = square_distance(centres, xyz)
        index = torch.arange(num_points, device=xyz.device).expand_as(distance)
        index = index.masked_fill(distance > radius * radius, num_points)
        index = index.topk(num_neighbors, dim=-1, largest=False).values
        first = index[..., :1]
        first = torch.where(first == num_points, distance.argmin(-1, keepdim=True), first)
        return torch.where(index == num_points, first.expand_as(index), index)


def _clouds(seed: int) -> list[torch.Tensor]:
    randn = seeded_randn(seed)
    duplicated = randn(2, 37, 3)
    duplicated[:, 20:] = duplicated[:, :17]  # every point of the second half repeats one of the first
    return [randn(1, 33, 3), randn(3, 77, 3), duplicated]


@farthest_point_sample.sample_inputs
def _fps_samples() -> list[Sample]:
    return [Sample("fps", (cloud, cloud.shape[1] // 3 + 1)) for cloud in _clouds(0)]


@knn_point.sample_inputs
def _knn_samples() -> list[Sample]:
    samples = []
    for cloud in _clouds(1):
        samples.append(Sample("knn-self", (5, cloud, cloud[:, ::3])))
        samples.append(Sample("knn-grid", (9, cloud.round(), cloud[:, :7].round())))  # many tied distances
    return samples


@ball_query.sample_inputs
def _ball_query_samples() -> list[Sample]:
    samples = []
    for cloud in _clouds(2):
        centres = cloud[:, ::4]
        samples.append(Sample("ball-0.8", (0.8, 7, cloud, centres)))
        samples.append(Sample("ball-centre-only", (1e-4, 3, cloud, centres)))
        samples.append(Sample("ball-wide", (10.0, 5, cloud, centres)))
    return samples
