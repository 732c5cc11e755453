"""Point clouds through the same training tools as images: `visionzoo train` / `eval` on synthetic shapes written in
the ModelNet40 HDF5 layout, resuming after SIGKILL, and torchrun with two processes."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
import torch

from _training import ENTRY_SCRIPT, entry_command, subprocess_env
from visionzoo.data.points import write_modelnet40_layout, write_shapenetpart_layout
from visionzoo.engine.logging import TIMING_COLUMNS, read_summary

# Six shapes that 128 points tell apart (the generator's pyramid and ellipsoid resemble its cone and a scaled
# sphere at that density).
CLASSES = ("sphere", "cube", "cylinder", "cone", "torus", "plane")
# The recipe's structure (configs/points/gpsformer_elite_cls.yaml) at a size two CPU cores train in about a
# minute: 128 points (the smallest cloud the three blocks take), milder scaling than the recipe's U[2/3, 3/2]
# (which turns spheres into ellipsoids), AdamW, less label smoothing, no head dropout.
QUICK = [
    "vz_gpsformer_elite_cls", f"model.num_classes={len(CLASSES)}", "model.drop_rate=0.0",
    "data.num_points=128", "data.workers=0", "aug.point_scale=[0.9,1.11]", "train.global_batch_size=16",
    "aug.label_smoothing=0.1", "optim.name=adamw", "optim.lr=3e-3", "optim.lr_base_batch=16",
    "optim.weight_decay=0.05", "sched.min_lr=1e-5", "sched.warmup_lr=3e-3",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("modelnet40_ply_hdf5_2048")
    return write_modelnet40_layout(folder, 288, 96, 128, classes=CLASSES, seed=0)


def _run(*args, timeout=1800):
    done = subprocess.run(entry_command(*args), env=subprocess_env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_elite_reaches_90_percent_on_held_out_synthetic_shapes(shapes, tmp_path):
    out = tmp_path / "run"
    _run("train", *QUICK, "train.epochs=15", "train.eval_every=15", "--data-dir", str(shapes), "--output", str(out))
    final = read_summary(out / "summary.csv")[-1]
    assert float(final["top1"]) >= 90.0 and float(final["macc"]) >= 88.0, final
    printed = _run("eval", "vz_gpsformer_elite_cls", "--checkpoint", str(out / "last.pth"), "--data-dir", str(shapes),
                   "--split", "test", "--data-format", "modelnet40_h5", "--num-points", "128", "--votes", "3",
                   "--output", str(tmp_path / "eval.json"))
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["single_pass"]["top1"] == pytest.approx(float(final["top1"]), abs=1e-6)
    assert results["single_pass"]["images"] == 96 and results["vote"]["votes"] == 3
    assert printed.index("(single pass)") < printed.index("(vote)")


@pytest.mark.slow
def test_a_killed_point_run_resumes_to_the_same_weights(shapes, tmp_path):
    args = [*QUICK, "train.epochs=2", "train.deterministic=true", "train.checkpoint_every_steps=3",
            "--data-dir", str(shapes)]
    _run("train", *args, "--output", str(tmp_path / "ref"))
    command = entry_command("train", *args, "--output", str(tmp_path / "run"), "--resume", "auto")
    victim = subprocess.Popen(command, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              text=True)
    for line in victim.stdout:
        if "(epoch 1, step 3)" in line:
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    resumed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout
    expected = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)["model"]
    actual = torch.load(tmp_path / "run" / "last.pth", weights_only=True)["model"]
    assert all(torch.equal(tensor, actual[name]) for name, tensor in expected.items())

    def metrics(run):
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_summary(run / "summary.csv")]

    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")


@pytest.mark.slow
def test_torchrun_two_processes_train_on_points(shapes, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
        str(ENTRY_SCRIPT), "train", *QUICK, "train.global_batch_size=32", "train.epochs=1",
        "--data-dir", str(shapes), "--output", str(out),
    ]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world_size=2, batch_size=16, accum_steps=1" in (out / "config.yaml").read_text()
    rows = read_summary(out / "summary.csv")
    assert len(rows) == 1 and int(rows[0]["global_step"]) == 288 // 32 and 0 <= float(rows[0]["top1"]) <= 100


@pytest.mark.slow
def test_part_segmentation_trains_and_evaluates_instance_and_class_miou(tmp_path):
    """vz_gpsformer_partseg through `visionzoo train` / `eval` on synthetic two-part shapes in the ShapeNetPart
    HDF5 layout (upper and lower halves of four upright shapes, 512 points: the five blocks' minimum)."""
    data = write_shapenetpart_layout(tmp_path / "shapenet_part_seg_hdf5_data", 48, 16, 512, seed=0)
    out = tmp_path / "run"
    _run("train", "vz_gpsformer_partseg", "data.num_points=512", "data.workers=0", "train.global_batch_size=16",
         "train.epochs=2", "train.eval_every=2", "model.drop_rate=0.0", "aug.point_scale=[0.9,1.11]", "aug.label_smoothing=0.1",
         "optim.name=adamw", "optim.lr=3e-3", "optim.lr_base_batch=16", "optim.weight_decay=0.05",
         "sched.min_lr=1e-5", "sched.warmup_lr=3e-3", "--data-dir", str(data), "--output", str(out))
    final = read_summary(out / "summary.csv")[-1]
    # Random halves score an IoU of about 1/3 per part and one part everywhere 1/4; six steps reach about 69%.
    assert float(final["instance_miou"]) >= 55.0 and float(final["class_miou"]) >= 55.0, final
    printed = _run("eval", "vz_gpsformer_partseg", "--checkpoint", str(out / "last.pth"), "--data-dir", str(data),
                   "--split", "test", "--data-format", "shapenetpart_h5", "--num-points", "512", "--workers", "0",
                   "--output", str(tmp_path / "eval.json"))
    results = json.loads((tmp_path / "eval.json").read_text())["single_pass"]
    assert results["images"] == 16 and "instance mIoU" in printed
    assert results["instance_miou"] == pytest.approx(float(final["instance_miou"]), abs=1e-6)
    assert results["class_miou"] == pytest.approx(float(final["class_miou"]), abs=1e-6)
