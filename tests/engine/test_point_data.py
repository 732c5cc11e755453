"""Point-cloud readers on files written in the released HDF5 layouts, the synthetic shapes, the augmentations,
voting and the part-segmentation metric."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from visionzoo.data.points import (
    SCANOBJECTNN_FILES,
    SYNTHETIC_CLASSES,
    PointCloudTrainTransform,
    PointDataError,
    ShapeNetPartDataset,
    modelnet40_h5,
    scanobjectnn_h5,
    shapenetpart_part_ranges,
    synthetic_shapes,
    vote_scales,
    write_modelnet40_layout,
    write_shapenetpart_layout,
)
from visionzoo.engine.evaluate import part_segmentation_miou


@pytest.fixture(scope="module")
def modelnet(tmp_path_factory):
    return write_modelnet40_layout(tmp_path_factory.mktemp("modelnet40_ply_hdf5_2048"), 24, 16, 64, seed=3)


def test_synthetic_modelnet_files_have_the_release_layout(modelnet):
    assert (modelnet / "train_files.txt").read_text().splitlines() == [
        "data/modelnet40_ply_hdf5_2048/ply_data_train0.h5", "data/modelnet40_ply_hdf5_2048/ply_data_train1.h5"]
    assert (modelnet / "shape_names.txt").read_text().split() == list(SYNTHETIC_CLASSES)
    with h5py.File(modelnet / "ply_data_train0.h5") as handle:
        assert {key: handle[key].shape for key in handle} == {
            "data": (12, 64, 3), "label": (12, 1), "normal": (12, 64, 3), "faceId": (12, 64)}
        assert handle["data"].dtype == np.float32


def test_modelnet_reader_concatenates_files_and_keeps_the_first_points(modelnet):
    train = modelnet40_h5(modelnet, "train", num_points=32)
    assert len(train) == 24 and train.classes == list(SYNTHETIC_CLASSES)
    points, label = train[13]
    with h5py.File(modelnet / "ply_data_train1.h5") as handle:
        np.testing.assert_array_equal(points.numpy(), handle["data"][1, :32])
        assert label.dtype == torch.int64 and int(label) == int(handle["label"][1, 0])
    assert len(modelnet40_h5(modelnet, "test", 64)) == 16


def test_synthetic_clouds_are_unit_sphere_normalised_with_unit_normals():
    points, normals, labels = synthetic_shapes(16, 100, seed=1)
    radius = np.linalg.norm(points, axis=-1).max(axis=1)
    np.testing.assert_allclose(radius, 1.0, rtol=1e-5)
    np.testing.assert_allclose(points.mean(axis=1), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, rtol=1e-4)
    assert np.bincount(labels, minlength=len(SYNTHETIC_CLASSES)).tolist() == [2] * len(SYNTHETIC_CLASSES)


def test_reader_errors_name_the_missing_piece(tmp_path, modelnet):
    with pytest.raises(PointDataError, match="shape_names.txt is missing"):
        modelnet40_h5(tmp_path, "train")
    with pytest.raises(PointDataError, match="asked for 4096 points per cloud, the files hold 64"):
        modelnet40_h5(modelnet, "train", num_points=4096)
    with pytest.raises(PointDataError, match="splits are"):
        modelnet40_h5(modelnet, "val")
    with pytest.raises(PointDataError, match="main_split/training_objectdataset_augmentedrot_scale75.h5 is missing"):
        scanobjectnn_h5(tmp_path, "train")


@pytest.mark.parametrize("variant", sorted(SCANOBJECTNN_FILES))
def test_scanobjectnn_variants_read_their_files(tmp_path, variant):
    rng = np.random.default_rng(0)
    for split, count in (("training", 6), ("test", 4)):
        path = tmp_path / SCANOBJECTNN_FILES[variant].format(split=split)
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(path, "w") as handle:
            handle["data"] = rng.standard_normal((count, 80, 3)).astype(np.float32)
            handle["label"] = rng.integers(15, size=count)
            handle["mask"] = np.zeros((count, 80), dtype=np.int64)
    train, test = scanobjectnn_h5(tmp_path, "train", variant, 50), scanobjectnn_h5(tmp_path, "test", variant, 50)
    assert (len(train), len(test), len(train.classes)) == (6, 4, 15) and train[0][0].shape == (50, 3)


def test_shapenetpart_reader_and_part_ranges(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 5), ("val", 2), ("test", 3)):
        with h5py.File(tmp_path / f"ply_data_{split}0.h5", "w") as handle:
            handle["data"] = rng.standard_normal((count, 64, 3)).astype(np.float32)
            handle["label"] = np.full((count, 1), 9, dtype=np.uint8)  # laptop: parts 28, 29
            handle["pid"] = rng.integers(28, 30, size=(count, 64)).astype(np.uint8)
        (tmp_path / f"{split}_hdf5_file_list.txt").write_text(f"hdf5_data/ply_data_{split}0.h5\n")
    trainval = ShapeNetPartDataset(tmp_path, "trainval", num_points=48)
    (points, category), parts = trainval[6]
    assert len(trainval) == 7 and points.shape == (48, 3) and int(category) == 9 and parts.shape == (48,)
    ranges = shapenetpart_part_ranges()
    assert [r.start for r in ranges] == [0, 4, 6, 8, 12, 16, 19, 22, 24, 28, 30, 36, 38, 41, 44, 47]
    assert ranges[-1].stop == 50 and ranges[9] == range(28, 30)


def test_synthetic_part_shapes_read_back_with_each_categorys_two_parts(tmp_path):
    root = write_shapenetpart_layout(tmp_path, num_train=8, num_test=4, num_points=64, seed=1)
    trainval, test = ShapeNetPartDataset(root, "trainval", 48), ShapeNetPartDataset(root, "test", 48)
    assert (len(trainval), len(test), len(trainval.classes)) == (8, 4, 50)
    ranges = shapenetpart_part_ranges()
    for category, parts in zip(trainval.categories.tolist(), trainval.parts):
        assert set(parts.tolist()) == set(ranges[category]), category  # both halves of every shape are present
    with pytest.raises(PointDataError, match="asked for 80 points"):
        ShapeNetPartDataset(root, "test", 80)


def test_part_miou_restricts_to_the_category_and_scores_absent_parts_as_one():
    ranges = shapenetpart_part_ranges()
    parts = torch.tensor([[28, 28, 29, 29], [4, 4, 4, 4]])
    logits = torch.zeros(2, 4, 50)
    logits[0, :, 0] = 9.0  # an airplane part scores highest but is not a laptop part
    logits[0, [0, 1, 2], 28] = 1.0
    logits[0, 3, 29] = 1.0
    logits[1, :, 4] = 1.0
    scores = part_segmentation_miou(logits, torch.tensor([9, 1]), parts, ranges)
    laptop = (2 / 3 + 1 / 2) / 2  # part 28: {0,1} vs {0,1,2}; part 29: {2,3} vs {3}
    bag = (1.0 + 1.0) / 2  # part 4 right, part 5 absent from both
    assert scores["instance_miou"] == pytest.approx(100 * (laptop + bag) / 2)
    assert scores["class_miou"] == pytest.approx(100 * (laptop + bag) / 2)


def test_train_augmentation_scales_shifts_and_shuffles_xyz_only():
    cloud = torch.cat([torch.randn(50, 3), torch.arange(50.0)[:, None]], dim=1)
    torch.manual_seed(0)
    out = PointCloudTrainTransform()(cloud)
    order = out[:, 3].long()
    assert sorted(order.tolist()) == list(range(50)) and not torch.equal(order, torch.arange(50))
    source = cloud[order, :3]
    scale = (out[1:, :3] - out[:1, :3]) / (source[1:] - source[:1])
    assert ((scale > 2 / 3 - 1e-4) & (scale < 1.5 + 1e-4)).all()
    assert torch.allclose(scale, scale[:1].expand_as(scale), rtol=1e-3, atol=1e-3)
    shift = out[:, :3] - source * scale[0]
    assert (shift.abs() <= 0.2 + 1e-5).all()


def test_vote_scales_start_unscaled_and_repeat_with_the_seed():
    scales = vote_scales(10)
    assert scales.shape == (10, 3) and torch.equal(scales[0], torch.ones(3))
    assert ((scales[1:] >= 0.85) & (scales[1:] <= 1.15)).all() and torch.equal(scales, vote_scales(10))


@pytest.mark.parametrize("name", ["vz_gpsformer_cls", "vz_gpsformer_elite_cls"])
def test_point_recipes_resolve_to_the_sheets_recipe(name):
    from visionzoo.engine.config import POINT_CONFIGS_DIR, derive, find_config, load_config

    assert find_config(name).parent == POINT_CONFIGS_DIR
    cfg = load_config(name)
    assert cfg["model"]["name"] == name and cfg["model"]["drop_rate"] == 0.5
    assert (cfg["data"]["format"], cfg["data"]["num_points"], cfg["data"]["val_split"]) == ("modelnet40_h5", 1024, "test")
    assert (cfg["optim"]["name"], cfg["optim"]["momentum"], cfg["optim"]["weight_decay"]) == ("sgd", 0.9, 2e-4)
    assert (cfg["sched"]["name"], cfg["sched"]["min_lr"], cfg["optim"]["clip_grad"]) == ("cosine", 1e-3, 1.0)
    assert (cfg["loss"]["name"], cfg["aug"]["label_smoothing"], cfg["aug"]["mixup"]) == ("ce_others", 0.2, 0.0)
    assert cfg["aug"]["point_scale"] == pytest.approx([2 / 3, 1.5]) and cfg["aug"]["point_shift"] == 0.2
    assert derive(cfg, 1)["lr"] == 0.1 and derive(cfg, 1)["batch_size"] == 32


def test_other_class_smoothing_gives_eps_over_c_minus_1_to_each_wrong_class():
    from visionzoo.engine.train import OtherClassSmoothingCrossEntropy

    logits, target = torch.randn(3, 5), torch.tensor([0, 4, 2])
    soft = torch.full((3, 5), 0.2 / 4)
    soft[torch.arange(3), target] = 0.8
    expected = -(soft * logits.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(OtherClassSmoothingCrossEntropy(0.2)(logits, target), expected)


def test_point_format_refuses_an_image_model():
    from visionzoo.data.points import point_count

    cfg = {"data": {"num_points": None, "format": "modelnet40_h5"}, "model": {"name": "resnet18"}}
    with pytest.raises(PointDataError, match="resnet18 is not a point-cloud model"):
        point_count(cfg)
