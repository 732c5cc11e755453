"""Point-cloud data: readers for the released HDF5 layouts, a generator of labelled synthetic shapes written in the
ModelNet40 layout, and the augmentations of the PointMLP recipe (specs/gpsformer.md §6, §8). Nothing downloads.

Layouts read (point the tools at the folder that holds the files):

* ModelNet40 ``modelnet40_ply_hdf5_2048/``: ``{train,test}_files.txt`` list ``ply_data_{split}N.h5`` files (the
  lists' folder prefixes are ignored), each with ``data`` (n, 2048, 3) and ``label`` (n, 1); ``shape_names.txt``
  names the classes in label order.
* ScanObjectNN ``h5_files/``: ``main_split/{training,test}_objectdataset_augmentedrot_scale75.h5`` (PB_T50_RS),
  ``main_split/{training,test}_objectdataset.h5`` (OBJ_BG), the latter under ``main_split_nobg/`` (OBJ_ONLY);
  ``data`` (n, 2048, 3) and ``label`` (n,).
* ShapeNetPart ``shapenet_part_seg_hdf5_data/``: ``{train,val,test}_hdf5_file_list.txt`` list h5 files with
  ``data`` (n, 2048, 3), the object category ``label`` (n, 1) and per-point part ids ``pid`` (n, 2048).
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

MODELNET40_FILES = {"train": "train_files.txt", "test": "test_files.txt"}
SCANOBJECTNN_FILES = {
    "PB_T50_RS": "main_split/{split}_objectdataset_augmentedrot_scale75.h5",
    "OBJ_BG": "main_split/{split}_objectdataset.h5",
    "OBJ_ONLY": "main_split_nobg/{split}_objectdataset.h5",
}
SCANOBJECTNN_CLASSES = (
    "bag", "bin", "box", "cabinet", "chair", "desk", "display", "door", "shelf", "table", "bed", "pillow", "sink",
    "sofa", "toilet",
)
SHAPENETPART_CATEGORIES = (
    "airplane", "bag", "cap", "car", "chair", "earphone", "guitar", "knife", "lamp", "laptop", "motorbike", "mug",
    "pistol", "rocket", "skateboard", "table",
)
SHAPENETPART_PARTS = (4, 2, 2, 4, 4, 3, 3, 2, 4, 2, 6, 2, 3, 3, 3, 3)
SYNTHETIC_CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid", "ellipsoid", "plane")


class PointDataError(ValueError):
    """A point-cloud data folder is missing, incomplete or not in the layout the reader expects."""


def _h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError("reading point-cloud HDF5 files needs h5py: pip install 'visionzoo[points]'") from error
    return h5py


def _read_h5(paths: list[Path], keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    h5py = _h5py()
    arrays: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    for path in paths:
        if not path.is_file():
            raise PointDataError(f"{path} is missing; the file list names it")
        with h5py.File(path, "r") as handle:
            absent = [key for key in keys if key not in handle]
            if absent:
                raise PointDataError(f"{path} has no dataset {absent}; it holds {sorted(handle)}")
            for key in keys:
                arrays[key].append(handle[key][:])
    return {key: np.concatenate(parts) for key, parts in arrays.items()}


def _listed_files(root: Path, list_name: str) -> list[Path]:
    listing = root / list_name
    if not listing.is_file():
        raise PointDataError(
            f"{listing} is missing: point the tool at the folder holding {list_name} and the .h5 files it lists"
        )
    return [root / Path(line.strip()).name for line in listing.read_text().splitlines() if line.strip()]


class PointCloudDataset(Dataset):
    """Clouds (n, P, 3+) and integer labels held in memory; items are ``(points (num_points, C), label)``.

    ``num_points`` keeps the first points of each stored cloud (PointMLP's convention, the stored order being
    random already); ``transform`` maps a (num_points, C) float tensor to another."""

    def __init__(self, points: np.ndarray, labels: np.ndarray, classes: list[str], root: Path,
                 num_points: int | None = None, transform=None):
        if points.ndim != 3 or points.shape[-1] < 3 or len(points) != len(labels):
            raise PointDataError(f"{root}: expected clouds (n, P, 3) and n labels, got {points.shape} and {labels.shape}")
        if num_points is not None and num_points > points.shape[1]:
            raise PointDataError(f"{root}: asked for {num_points} points per cloud, the files hold {points.shape[1]}")
        self.points = torch.from_numpy(np.ascontiguousarray(points[:, :num_points], dtype=np.float32))
        self.labels = torch.from_numpy(labels.reshape(-1).astype(np.int64))
        if len(self.labels) and (self.labels.min() < 0 or self.labels.max() >= len(classes)):
            raise PointDataError(f"{root}: labels span {int(self.labels.min())}..{int(self.labels.max())}, "
                                 f"but {len(classes)} classes are named")
        self.classes = list(classes)
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.root = root
        self.transform = transform
        self.skipped: list = []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        points = self.points[index]
        return (self.transform(points) if self.transform is not None else points), self.labels[index]

    def notice(self) -> str | None:
        return None


def modelnet40_h5(root: str | Path, split: str, num_points: int | None = 1024, transform=None) -> PointCloudDataset:
    """ModelNet40 ``modelnet40_ply_hdf5_2048`` (or any folder in its layout) split ``train`` or ``test``."""
    root = Path(root)
    if split not in MODELNET40_FILES:
        raise PointDataError(f"ModelNet40 splits are {sorted(MODELNET40_FILES)}, got {split!r}")
    names_file = root / "shape_names.txt"
    if not names_file.is_file():
        raise PointDataError(f"{names_file} is missing: is {root} a modelnet40_ply_hdf5_2048 folder?")
    classes = [line.strip() for line in names_file.read_text().splitlines() if line.strip()]
    arrays = _read_h5(_listed_files(root, MODELNET40_FILES[split]), ("data", "label"))
    return PointCloudDataset(arrays["data"], arrays["label"], classes, root, num_points, transform)


def scanobjectnn_h5(root: str | Path, split: str, variant: str = "PB_T50_RS", num_points: int | None = 1024,
                    transform=None) -> PointCloudDataset:
    """ScanObjectNN ``h5_files`` split ``train`` or ``test`` of ``variant`` (PB_T50_RS, OBJ_BG, OBJ_ONLY)."""
    if variant not in SCANOBJECTNN_FILES:
        raise PointDataError(f"ScanObjectNN variants are {sorted(SCANOBJECTNN_FILES)}, got {variant!r}")
    if split not in ("train", "test"):
        raise PointDataError(f"ScanObjectNN splits are ['test', 'train'], got {split!r}")
    root = Path(root)
    path = root / SCANOBJECTNN_FILES[variant].format(split="training" if split == "train" else "test")
    arrays = _read_h5([path], ("data", "label"))
    return PointCloudDataset(arrays["data"], arrays["label"], list(SCANOBJECTNN_CLASSES), root, num_points, transform)


class ShapeNetPartDataset(Dataset):
    """ShapeNetPart HDF5 release; items are ``((points (P, 3), category), part ids (P,))`` with global part ids, so
    that the training tools pass ``(points, category)`` to the model and score the per-point part ids.

    ``transform`` maps the points alone and must keep their order (the part ids stay where they are)."""

    def __init__(self, root: str | Path, split: str, num_points: int | None = 2048, transform=None):
        root = Path(root)
        if split not in ("train", "val", "test", "trainval"):
            raise PointDataError(f"ShapeNetPart splits are train, val, trainval, test; got {split!r}")
        lists = ("train", "val") if split == "trainval" else (split,)
        files = [path for name in lists for path in _listed_files(root, f"{name}_hdf5_file_list.txt")]
        arrays = _read_h5(files, ("data", "label", "pid"))
        if num_points is not None and num_points > arrays["data"].shape[1]:
            raise PointDataError(f"{root}: asked for {num_points} points per cloud, the files hold "
                                 f"{arrays['data'].shape[1]}")
        self.points = torch.from_numpy(np.ascontiguousarray(arrays["data"][:, :num_points], dtype=np.float32))
        self.categories = torch.from_numpy(arrays["label"].reshape(-1).astype(np.int64))
        self.parts = torch.from_numpy(arrays["pid"][:, :num_points].astype(np.int64))
        if len(self.parts) and (self.parts.min() < 0 or self.parts.max() >= sum(SHAPENETPART_PARTS)):
            raise PointDataError(f"{root}: part ids span {int(self.parts.min())}..{int(self.parts.max())}, "
                                 f"ShapeNetPart numbers its {sum(SHAPENETPART_PARTS)} parts from 0")
        self.classes = [f"{category}_{index}" for category, count in zip(SHAPENETPART_CATEGORIES, SHAPENETPART_PARTS)
                        for index in range(count)]
        self.class_to_idx = {name: index for index, name in enumerate(self.classes)}
        self.root, self.transform, self.skipped = root, transform, []

    def __len__(self) -> int:
        return len(self.categories)

    def __getitem__(self, index: int):
        points = self.points[index]
        points = self.transform(points) if self.transform is not None else points
        return (points, self.categories[index]), self.parts[index]

    def notice(self) -> str | None:
        return None


def shapenetpart_part_ranges() -> list[range]:
    """The global part ids of each of the 16 categories (0-3 airplane, 4-5 bag, ...)."""
    starts = np.cumsum((0, *SHAPENETPART_PARTS[:-1]))
    return [range(int(start), int(start) + count) for start, count in zip(starts, SHAPENETPART_PARTS)]


def point_dataset(data_format: str, root: str | Path, split: str, num_points: int, transform=None,
                  variant: str = "PB_T50_RS") -> PointCloudDataset | ShapeNetPartDataset:
    """The reader for ``data_format`` (``modelnet40_h5``, ``scanobjectnn_h5`` or ``shapenetpart_h5``)."""
    if data_format == "modelnet40_h5":
        return modelnet40_h5(root, split, num_points, transform)
    if data_format == "scanobjectnn_h5":
        return scanobjectnn_h5(root, split, variant, num_points, transform)
    if data_format == "shapenetpart_h5":
        return ShapeNetPartDataset(root, split, num_points, transform)
    raise PointDataError(f"unknown point data format {data_format!r}; use modelnet40_h5, scanobjectnn_h5 or "
                         f"shapenetpart_h5")


class PointCloudTrainTransform:
    """PointMLP's training augmentation: per-axis scale U[2/3, 3/2], then per-axis shift U[−0.2, 0.2] of xyz (extra
    channels untouched), then a random point order. Draws from torch's global RNG, which the loader seeds per
    sample."""

    def __init__(self, scale: tuple[float, float] = (2 / 3, 3 / 2), shift: float = 0.2, shuffle: bool = True):
        self.scale, self.shift, self.shuffle = scale, shift, shuffle

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        low, high = self.scale
        scale = torch.empty(3).uniform_(low, high)
        shift = torch.empty(3).uniform_(-self.shift, self.shift)
        points = points.clone()
        points[:, :3] = points[:, :3] * scale + shift
        return points[torch.randperm(len(points))] if self.shuffle else points


def vote_scales(votes: int, seed: int = 0, scale: tuple[float, float] = (0.85, 1.15)) -> torch.Tensor:
    """Per-axis scales of ``votes`` passes (votes, 3): pass 1 unscaled, the others independent U[0.85, 1.15] from a
    fixed seed (the zoo's non-compounding form of PointMLP's voting, specs/gpsformer.md §6)."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.empty(votes, 3).uniform_(*scale, generator=generator)
    scales[0] = 1.0
    return scales


# --- synthetic shapes -------------------------------------------------------------------------------------------

def _sample_surface(name: str, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points uniformly-ish on the unit-sized surface of shape ``name`` and their outward normals."""
    u, v = rng.random(count), rng.random(count)
    if name in ("sphere", "ellipsoid"):
        z = 2 * u - 1
        phi = 2 * math.pi * v
        r = np.sqrt(1 - z**2)
        normal = np.stack([r * np.cos(phi), r * np.sin(phi), z], 1)
        axes = np.array([1.0, 0.6, 0.35]) if name == "ellipsoid" else np.ones(3)
        points = normal * axes
        normal = normal / axes
    elif name == "cube":
        face = rng.integers(6, size=count)
        axis, sign = face % 3, np.where(face < 3, 1.0, -1.0)
        points = rng.uniform(-1, 1, (count, 3))
        points[np.arange(count), axis] = sign
        normal = np.zeros((count, 3))
        normal[np.arange(count), axis] = sign
    elif name == "cylinder":
        phi = 2 * math.pi * u
        on_cap = rng.random(count) < 1 / 3
        radius = np.where(on_cap, np.sqrt(v), 1.0)
        z = np.where(on_cap, np.sign(rng.random(count) - 0.5), 2 * v - 1)
        points = np.stack([radius * np.cos(phi), radius * np.sin(phi), z], 1)
        normal = np.where(on_cap[:, None], np.stack([0 * z, 0 * z, z], 1),
                          np.stack([np.cos(phi), np.sin(phi), 0 * z], 1))
    elif name == "cone":
        phi = 2 * math.pi * u
        on_base = rng.random(count) < 0.3
        height = np.sqrt(v)  # area grows with distance from the apex
        radius = np.where(on_base, np.sqrt(v), height)
        z = np.where(on_base, -1.0, 1 - 2 * height)
        points = np.stack([radius * np.cos(phi), radius * np.sin(phi), z], 1)
        side = np.stack([2 * np.cos(phi), 2 * np.sin(phi), np.ones(count)], 1) / math.sqrt(5)
        normal = np.where(on_base[:, None], np.array([0.0, 0.0, -1.0]), side)
    elif name == "torus":
        theta, phi = 2 * math.pi * u, 2 * math.pi * v
        normal = np.stack([np.cos(phi) * np.cos(theta), np.sin(phi) * np.cos(theta), np.sin(theta)], 1)
        ring = np.stack([np.cos(phi), np.sin(phi), 0 * phi], 1)
        points = 0.7 * ring + 0.3 * normal
    elif name == "pyramid":
        corners = np.array([[1.0, 1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, -1.0], [1.0, -1.0, -1.0]])
        apex = np.array([0.0, 0.0, 1.0])
        side = rng.integers(4, size=count)
        flip = u + v > 1
        a, b = np.where(flip, 1 - u, u), np.where(flip, 1 - v, v)
        first, second = corners[side], corners[(side + 1) % 4]
        points = apex + a[:, None] * (first - apex) + b[:, None] * (second - apex)
        normal = np.cross(first - apex, second - apex)
        on_base = rng.random(count) < 0.2
        points[on_base] = np.stack([2 * u[on_base] - 1, 2 * v[on_base] - 1, -np.ones(on_base.sum())], 1)
        normal[on_base] = (0.0, 0.0, -1.0)
    elif name == "plane":
        points = np.stack([2 * u - 1, 2 * v - 1, 0.05 * rng.standard_normal(count)], 1)
        normal = np.tile([0.0, 0.0, 1.0], (count, 1))
    else:
        raise ValueError(f"unknown synthetic shape {name!r}; known: {SYNTHETIC_CLASSES}")
    normal = normal / np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
    return points, normal


def _random_rotation(rng: np.random.Generator, upright: bool) -> np.ndarray:
    """A random turn about the z axis (``upright``, as ModelNet40's aligned models vary), else any rotation."""
    if upright:
        angle = rng.uniform(0, 2 * math.pi)
        cos, sin = math.cos(angle), math.sin(angle)
        return np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def synthetic_shapes(count: int, num_points: int = 2048, classes: tuple[str, ...] = SYNTHETIC_CLASSES,
                     noise: float = 0.01, upright: bool = True, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``count`` labelled clouds (count, num_points, 3) with normals: each a random class's surface, scaled per axis
    by U[0.8, 1.2], turned about z at random (any rotation unless ``upright``), jittered by ``noise``, then centred
    and scaled into the unit sphere as the ModelNet40 release is. Labels cycle through the classes so every class
    is equally represented."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % len(classes)
    rng.shuffle(labels)
    points = np.empty((count, num_points, 3), dtype=np.float32)
    normals = np.empty((count, num_points, 3), dtype=np.float32)
    for index, label in enumerate(labels):
        points[index], normals[index], _ = _synthetic_cloud(classes[label], num_points, rng, noise, upright)
    return points, normals, labels.astype(np.uint8)


def _synthetic_cloud(name: str, num_points: int, rng: np.random.Generator, noise: float, upright: bool):
    """One cloud of shape ``name`` placed as :func:`synthetic_shapes` describes, its normals, and the unplaced
    surface points (whose coordinates define the synthetic parts)."""
    surface, normal = _sample_surface(name, num_points, rng)
    scale = rng.uniform(0.8, 1.2, 3)
    rotation = _random_rotation(rng, upright)
    cloud = (surface * scale) @ rotation.T + noise * rng.standard_normal((num_points, 3))
    cloud -= cloud.mean(0)
    cloud /= np.linalg.norm(cloud, axis=1).max()
    turned = (normal / scale) @ rotation.T
    return cloud, turned / np.maximum(np.linalg.norm(turned, axis=1, keepdims=True), 1e-12), surface


# ShapeNetPart categories with two parts each, drawn as synthetic shapes whose upper half (z ≥ 0 before placing)
# is the category's first part and whose lower half is its second.
SYNTHETIC_PART_SHAPES = {"bag": "sphere", "cap": "cone", "laptop": "cube", "mug": "cylinder"}


def write_shapenetpart_layout(root: str | Path, num_train: int = 200, num_test: int = 60, num_points: int = 2048,
                              seed: int = 0) -> Path:
    """Write synthetic part-labelled shapes as a ``shapenet_part_seg_hdf5_data`` folder: ``ply_data_{split}0.h5``
    with ``data``, the category ``label`` (n, 1) and per-point global part ids ``pid``, and the
    ``{train,val,test}_hdf5_file_list.txt`` lists (val holds no shapes, so ``trainval`` equals ``train``). Upright
    shapes (turned about z only), so an upper/lower half stays one."""
    h5py = _h5py()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    first_part = dict(zip(SHAPENETPART_CATEGORIES, np.cumsum((0, *SHAPENETPART_PARTS[:-1]))))
    categories = [SHAPENETPART_CATEGORIES.index(name) for name in SYNTHETIC_PART_SHAPES]
    for offset, (split, count) in enumerate((("train", num_train), ("val", 0), ("test", num_test))):
        rng = np.random.default_rng(seed * 3 + offset)
        labels = np.arange(count) % len(categories)
        rng.shuffle(labels)
        points = np.empty((count, num_points, 3), dtype=np.float32)
        parts = np.empty((count, num_points), dtype=np.uint8)
        for index, choice in enumerate(labels):
            category = SHAPENETPART_CATEGORIES[categories[choice]]
            points[index], _, surface = _synthetic_cloud(SYNTHETIC_PART_SHAPES[category], num_points, rng, 0.01, True)
            parts[index] = first_part[category] + (surface[:, 2] < 0)
        name = f"ply_data_{split}0.h5"
        with h5py.File(root / name, "w") as handle:
            handle.create_dataset("data", data=points)
            handle.create_dataset("label", data=np.asarray(categories, dtype=np.uint8)[labels, None])
            handle.create_dataset("pid", data=parts)
        (root / f"{split}_hdf5_file_list.txt").write_text(f"hdf5_data/{name}\n")
    return root


def write_modelnet40_layout(root: str | Path, num_train: int = 400, num_test: int = 120, num_points: int = 2048,
                            classes: tuple[str, ...] = SYNTHETIC_CLASSES, files_per_split: int = 2,
                            seed: int = 0) -> Path:
    """Write synthetic shapes as a ``modelnet40_ply_hdf5_2048`` folder: ``ply_data_{train,test}N.h5`` with
    ``data``, ``label`` (n, 1), ``normal`` and ``faceId``, the ``{train,test}_files.txt`` lists (with the release's
    ``data/modelnet40_ply_hdf5_2048/`` prefix) and ``shape_names.txt``. Train and test use disjoint seeds."""
    h5py = _h5py()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / "shape_names.txt").write_text("".join(f"{name}\n" for name in classes))
    for offset, (split, count) in enumerate((("train", num_train), ("test", num_test))):
        points, normals, labels = synthetic_shapes(count, num_points, classes, seed=seed * 2 + offset)
        names = []
        for part, chunk in enumerate(np.array_split(np.arange(count), files_per_split)):
            name = f"ply_data_{split}{part}.h5"
            with h5py.File(root / name, "w") as handle:
                handle.create_dataset("data", data=points[chunk])
                handle.create_dataset("label", data=labels[chunk, None])
                handle.create_dataset("normal", data=normals[chunk])
                handle.create_dataset("faceId", data=np.zeros((len(chunk), num_points), dtype=np.int32))
            names.append(f"data/modelnet40_ply_hdf5_2048/{name}\n")
        (root / MODELNET40_FILES[split]).write_text("".join(names))
    return root


def add_point_shapes_parser(kinds) -> None:
    shapes = kinds.add_parser("point-shapes", help="synthetic labelled point clouds in the ModelNet40 HDF5 layout")
    shapes.add_argument("out_dir", help="folder to write the h5 files, lists and shape_names.txt into")
    shapes.add_argument("--train", type=int, default=400, help="training shapes (default 400)")
    shapes.add_argument("--test", type=int, default=120, help="held-out test shapes (default 120)")
    shapes.add_argument("--points", type=int, default=2048, help="points per cloud (default 2048, as released)")
    shapes.add_argument("--seed", type=int, default=0)


def run_point_shapes(args: argparse.Namespace) -> int:
    write_modelnet40_layout(args.out_dir, args.train, args.test, args.points, seed=args.seed)
    print(f"wrote {args.train} train and {args.test} test clouds of {len(SYNTHETIC_CLASSES)} shapes "
          f"({', '.join(SYNTHETIC_CLASSES)}) to {args.out_dir} in the modelnet40_ply_hdf5_2048 layout")
    return 0


# --- training-tool glue -----------------------------------------------------------------------------------------

def point_count(cfg: dict) -> int:
    """Points per cloud for a training config: ``data.num_points``, else the model's ``pretrained_cfg``."""
    if cfg["data"]["num_points"]:
        return cfg["data"]["num_points"]
    from timm.models import get_pretrained_cfg

    name = cfg["model"]["name"]
    size = getattr(get_pretrained_cfg(name), "input_size", None) if get_pretrained_cfg(name) else None
    if size is None or len(size) != 2:
        raise PointDataError(
            f"data.format={cfg['data']['format']} reads point clouds, but {name} is not a point-cloud model "
            f"(its input size is {size}); pick a points model (e.g. vz_gpsformer_cls) or set data.num_points"
        )
    return int(size[0])


def point_splits(cfg: dict, num_points: int) -> tuple[Dataset, Dataset]:
    """The train split with the recipe's augmentation and the eval split without, from ``cfg['data']``."""
    data, aug = cfg["data"], cfg["aug"]
    if not data["dir"]:
        raise PointDataError("data.dir is not set; pass --data-dir DIR (the folder holding the .h5 files)")
    # Part ids are per point: the part-segmentation transform keeps the stored order.
    shuffle = data["format"] != "shapenetpart_h5"
    augment = PointCloudTrainTransform(tuple(aug["point_scale"]), aug["point_shift"], shuffle)
    variant = data["scanobjectnn_variant"]
    train = point_dataset(data["format"], data["dir"], data["train_split"], num_points, augment, variant)
    val = point_dataset(data["format"], data["dir"], data["val_split"], num_points, None, variant)
    return train, val
