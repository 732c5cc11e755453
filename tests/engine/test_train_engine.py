"""Pieces of the training engine: safe checkpoints, RNG round trips, resumable sampling, per-sample seeding."""
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, DistributedSampler

from _training import TINY_OVERRIDES, parse_train_cli
from visionzoo.data.digits import make_digits
from visionzoo.data.loader import DatasetError, ResumableSampler, SeededDataset, create_folder_dataset
from visionzoo.engine.checkpoint import atomic_save, rng_state, set_rng_state
from visionzoo.models._checkpoint import read_checkpoint
from visionzoo.engine.evaluate import autocast_for
from visionzoo.engine import train as train_module
from visionzoo.engine.train import deterministic_algorithms, param_groups_with_lr_multipliers


def _draw() -> tuple:
    return random.random(), float(np.random.rand()), torch.rand(3).tolist()


def test_rng_state_survives_a_weights_only_round_trip(tmp_path: Path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached Gaussian in NumPy's state
    atomic_save({"rng": rng_state()}, tmp_path / "state.pth")
    expected = _draw()
    _draw()
    set_rng_state(read_checkpoint(tmp_path / "state.pth")["rng"])
    assert _draw() == expected


def test_atomic_save_replaces_without_leaving_temporaries(tmp_path: Path):
    target = tmp_path / "last.pth"
    atomic_save({"step": torch.tensor(1)}, target)
    atomic_save({"step": torch.tensor(2)}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
    assert torch.load(target, weights_only=True)["step"] == 2


def test_resumable_sampler_continues_the_same_epoch_order():
    def sampler():
        return ResumableSampler(DistributedSampler(range(50), num_replicas=2, rank=1, shuffle=True, seed=7), 7, 1)

    full, tail = sampler(), sampler()
    full.set_epoch(3)
    tail.set_epoch(3, start=10)
    assert list(tail) == list(full)[10:] and len(tail) == len(full) - 10
    other = sampler()
    other.set_epoch(4)
    assert [index for index, _ in other] != [index for index, _ in full]
    seeds = [seed for _, seed in full]
    assert len(set(seeds)) == len(seeds)


class _NoisyDataset(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        return index + random.random() + float(np.random.rand()) + torch.rand(()).item()


def test_seeded_dataset_repeats_a_sample_and_leaves_global_rngs_alone():
    dataset = SeededDataset(_NoisyDataset())
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    expected = _draw()
    torch.manual_seed(0), random.seed(0), np.random.seed(0)
    first = dataset[(2, 123)]
    assert dataset[(2, 123)] == first != dataset[(2, 124)]
    assert _draw() == expected


def test_param_groups_apply_lr_multipliers_and_skip_decay_on_1d():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    model.add_module("conv_offset", nn.Conv2d(4, 2, 1))
    groups = param_groups_with_lr_multipliers(model, 0.05, {"conv_offset": 0.01})
    summary = {(g["weight_decay"], g["lr_scale"]): sum(p.numel() for p in g["params"]) for g in groups}
    assert summary == {(0.05, 1.0): 108, (0.0, 1.0): 12, (0.05, 0.01): 8, (0.0, 0.01): 2}


def test_fp16_autocast_on_cpu_is_refused_with_a_hint():
    with pytest.raises(ValueError, match="amp=bf16 on the CPU"):
        autocast_for(torch.device("cpu"), "fp16")


def test_digits_folders_are_stratified_rgb_images(tmp_path: Path):
    counts = make_digits(tmp_path, size=24, val_fraction=0.25)
    assert counts["train"] + counts["val"] == 1797
    val = create_folder_dataset(tmp_path, "val", None)
    assert len(val) == counts["val"] and sorted(set(val.class_to_idx)) == [str(i) for i in range(10)]
    image, label = val[0]
    assert image.size == (24, 24) and image.mode == "RGB" and 0 <= label < 10
    with pytest.raises(DatasetError, match="ImageNet-style train/ folder"):
        create_folder_dataset(tmp_path / "missing", "train", None)


def test_randaugment_inc1_at_full_magnitude_posterizes_to_black():
    from timm.data import auto_augment
    from PIL import Image

    from visionzoo.data.loader import train_transform
    from visionzoo.engine.config import load_config

    train_transform(load_config("shvit_s1"), {"input_size": (3, 32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    op = auto_augment.AugmentOp("PosterizeIncreasing", prob=1.0, magnitude=10)
    image = Image.new("RGB", (8, 8), (200, 100, 50))
    assert op(image).getextrema() == ((0, 0), (0, 0), (0, 0))


def test_bf16_autocast_on_cpu_runs_matmuls_in_bf16():
    with autocast_for(torch.device("cpu"), "bf16"):
        assert nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.bfloat16
    with autocast_for(torch.device("cpu"), "auto"):
        assert nn.Linear(4, 2)(torch.randn(3, 4)).dtype == torch.float32


@pytest.fixture
def nondeterministic_process(monkeypatch):
    """The process as a fresh one starts: deterministic algorithms off, cuDNN autotuning on, no cuBLAS workspace."""
    saved = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    yield
    torch.use_deterministic_algorithms(saved[0])
    torch.backends.cudnn.benchmark = saved[1]


def _determinism() -> tuple:
    return (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            os.environ.get("CUBLAS_WORKSPACE_CONFIG"))


def test_deterministic_algorithms_hold_inside_the_block_only(nondeterministic_process):
    with deterministic_algorithms(True):
        assert _determinism() == (True, False, ":4096:8")
        with deterministic_algorithms(False):  # an inner run that does not ask for it keeps the outer setting
            assert _determinism() == (True, False, ":4096:8")
    assert _determinism() == (False, True, None)
    with pytest.raises(RuntimeError, match="inside"), deterministic_algorithms(True):
        raise RuntimeError("inside")
    assert _determinism() == (False, True, None)


def test_a_deterministic_training_run_leaves_the_process_as_it_found_it(nondeterministic_process, monkeypatch,
                                                                        tmp_path):
    seen = []

    class StopAtStart:
        def __init__(self, *args):
            seen.append(_determinism())
            raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "Trainer", StopAtStart)
    args = parse_train_cli("train", "shvit_s1", *TINY_OVERRIDES, "train.deterministic=true", "--data-dir",
                           str(tmp_path), "--output", str(tmp_path / "run"))
    with pytest.raises(KeyboardInterrupt):
        train_module.run_train(args)
    assert seen == [(True, False, ":4096:8")]
    assert _determinism() == (False, True, None)
