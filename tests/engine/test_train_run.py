"""Training end to end on real data (scikit-learn's digits): loss, CSV, wandb, eval, resume after SIGKILL, DDP."""
import json
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _training import (
    ENTRY_SCRIPT, ROOT, TEST_MODEL, TINY_OVERRIDES, entry_command, parse_train_cli, subprocess_env,
)
from visionzoo.data.digits import make_digits
from visionzoo.engine.evaluate import run_eval
from visionzoo.engine.logging import SUMMARY_COLUMNS, TIMING_COLUMNS, read_summary
from visionzoo.engine.train import run_train


SMALL_TRAIN, SMALL_VAL = 320, 80  # 40 images of each digit, a fifth of them for validation


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert make_digits(out, size=32, max_per_class=40) == {"train": SMALL_TRAIN, "val": SMALL_VAL}
    return out


@pytest.fixture(scope="module")
def wandb_run(digits, tmp_path_factory):
    """Three short epochs (30 steps) in this process with --wandb (offline): the run the tests below inspect."""
    out = tmp_path_factory.mktemp("run") / "digits"
    patch = pytest.MonkeyPatch()
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.delenv("WANDB_API_KEY", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = parse_train_cli(
            "train", "shvit_s1", *TINY_OVERRIDES, "train.epochs=3", "train.log_every=5", "ema.enabled=true",
            "ema.decay=0.9", "--data-dir", str(digits), "--output", str(out), "--wandb",
        )
        assert run_train(args) == 0
    finally:
        torch.set_num_threads(threads)
        patch.undo()
    return out


def test_loss_falls_and_every_epoch_is_summarised(wandb_run):
    rows = read_summary(wandb_run / "summary.csv")
    assert list(rows[0]) == list(SUMMARY_COLUMNS) and [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert [row["global_step"] for row in rows] == ["10", "20", "30"]
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    assert 0 <= float(rows[-1]["top1"]) <= float(rows[-1]["top5"]) <= 100 and rows[-1]["ema_top1"]
    assert {"last.pth", "best.pth", "config.yaml", "summary.csv"} <= {p.name for p in wandb_run.iterdir()}
    saved = (wandb_run / "config.yaml").read_text()
    assert saved.startswith("# derived: world_size=1, batch_size=32, accum_steps=1") and f"name: {TEST_MODEL}" in saved


def test_wandb_run_is_written_offline_in_the_run_folder(wandb_run):
    runs = list((wandb_run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))


def test_eval_reproduces_the_validation_metrics(wandb_run, digits, capsys, one_thread):
    output = wandb_run / "eval.json"
    args = parse_train_cli(
        "eval", TEST_MODEL, "--checkpoint", str(wandb_run / "last.pth"), "--data-dir", str(digits),
        "--input-size", "32", "--workers", "0", "--output", str(output),
    )
    assert run_eval(args) == 0
    results = json.loads(output.read_text())
    last = read_summary(wandb_run / "summary.csv")[-1]
    assert results["top1"] == pytest.approx(float(last["top1"]))
    assert results["loss"] == pytest.approx(float(last["val_loss"]))
    assert results["images"] == SMALL_VAL and results["params"] > 0 and results["img_per_s"] > 0
    assert "top-1" in capsys.readouterr().out
    ema_args = parse_train_cli("eval", TEST_MODEL, "--checkpoint", str(wandb_run / "last.pth"), "--data-dir", str(digits),
                      "--input-size", "32", "--workers", "0", "--output", str(output), "--ema")
    run_eval(ema_args)
    assert json.loads(output.read_text())["top1"] == pytest.approx(float(last["ema_top1"]))


def test_an_existing_run_is_never_overwritten(wandb_run, digits):
    args = parse_train_cli("train", "shvit_s1", *TINY_OVERRIDES, "--data-dir", str(digits), "--output", str(wandb_run))
    with pytest.raises(ValueError, match="--resume auto"):
        run_train(args)


RESUME_OVERRIDES = [
    *TINY_OVERRIDES, "aug.repeated_aug=3", "train.epochs=2", "train.deterministic=true",
    "train.checkpoint_every_steps=2",
    "model.drop_path_rate=0.1", "ema.enabled=true", "ema.decay=0.9", "optim.clip_grad=0.05", "optim.clip_mode=agc",
]


def test_a_killed_run_resumes_to_the_same_weights_and_metrics(digits, tmp_path):
    env = subprocess_env()
    reference = subprocess.run(
        entry_command(
            "train", "shvit_s1", *RESUME_OVERRIDES, "--data-dir", str(digits), "--output", str(tmp_path / "ref")
        ),
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert "wandb imported: False" in reference.stdout  # nothing imports wandb without --wandb

    command = entry_command(
        "train", "shvit_s1", *RESUME_OVERRIDES, "--data-dir", str(digits), "--output", str(tmp_path / "run"),
        "--resume", "auto",
    )
    victim = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in victim.stdout:
        if "(epoch 1, step 2)" in line:  # mid-way through the second epoch
            victim.send_signal(signal.SIGKILL)
            break
    victim.wait(timeout=60)
    assert victim.returncode == -signal.SIGKILL
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    line = next(line for line in resumed.stdout.splitlines() if line.startswith("resumed from"))
    step = int(line.split("step ")[1].split()[0])
    assert "epoch 1," in line and 2 <= step < int(line.split(" of ")[1]), line

    expected = torch.load(tmp_path / "ref" / "last.pth", weights_only=True)
    actual = torch.load(tmp_path / "run" / "last.pth", weights_only=True)
    for key in ("model", "model_ema"):
        assert expected[key].keys() == actual[key].keys()
        for name, tensor in expected[key].items():
            assert torch.equal(tensor, actual[key][name]), f"{key}.{name} differs after resuming"
    assert expected["global_step"] == actual["global_step"]

    def metrics(run):
        return [{k: v for k, v in row.items() if k not in TIMING_COLUMNS} for row in read_summary(run / "summary.csv")]

    assert metrics(tmp_path / "run") == metrics(tmp_path / "ref")


def test_torchrun_two_cpu_processes_train_with_the_same_summary_format(digits, tmp_path):
    out = tmp_path / "ddp"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=0",
        str(ENTRY_SCRIPT),
        "train", "shvit_s1", *TINY_OVERRIDES, "train.global_batch_size=64", "train.epochs=1",
        "--data-dir", str(digits), "--output", str(out),
    ]
    done = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world_size=2, batch_size=32, accum_steps=1" in (out / "config.yaml").read_text()
    rows = read_summary(out / "summary.csv")
    assert len(rows) == 1 and list(rows[0]) == list(SUMMARY_COLUMNS)
    assert int(rows[0]["global_step"]) == SMALL_TRAIN // 64 and 0 <= float(rows[0]["top1"]) <= 100
    assert done.stdout.count("epoch 1  train_loss") == 1  # only rank 0 reports


def _quick_start_commands() -> list[list[str]]:
    """The ``visionzoo ...`` lines of docs/train.md's quick start, continuation lines joined, comments dropped."""
    text = (ROOT / "docs" / "train.md").read_text()
    section = text[text.index("## Quick start"):]
    block = section[section.index("```bash") + len("```bash"):section.index("```", section.index("```bash") + 7)]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line.split("#")[0]) for line in joined.splitlines() if line.strip().startswith("visionzoo")]


@pytest.mark.slow
def test_the_documented_quick_start_ends_with_a_good_best_checkpoint(tmp_path):
    """docs/train.md's digits commands, run as written from an empty folder: best.pth reaches >= 90 % top-1."""
    commands = _quick_start_commands()
    assert [command[1] for command in commands] == ["data", "train", "eval"]
    outputs = []
    for command in commands:
        done = subprocess.run([sys.executable, "-m", *command], cwd=tmp_path, env=subprocess_env(),
                              capture_output=True, text=True, timeout=1500)
        assert done.returncode == 0, done.stderr[-3000:]
        outputs.append(done.stdout)
    run = tmp_path / "runs" / "digits"
    best = torch.load(run / "best.pth", weights_only=True)["best"]
    top1 = float(outputs[-1].split("top-1 ")[1].split()[0])
    print(outputs[1][-2000:], outputs[2], sep="\n")
    assert best["metric"] >= 90.0 and top1 == pytest.approx(best["metric"], abs=1e-3)  # printed to 3 places


def test_accumulation_bf16_channels_last_and_checkpointing_run_on_the_cpu(tmp_path, one_thread):
    data, out = tmp_path / "data", tmp_path / "run"
    make_digits(data, size=32, max_per_class=8)  # 60 train images: 3 micro-batches of 16
    args = parse_train_cli(
        "train", "shvit_s1", *TINY_OVERRIDES, "train.batch_size=16", "train.epochs=1",
        "runtime.amp=bf16", "runtime.channels_last=true", "runtime.grad_checkpointing=true",
        "--data-dir", str(data), "--output", str(out),
    )
    assert run_train(args) == 0
    assert "batch_size=16, accum_steps=2" in (out / "config.yaml").read_text()
    (row,) = read_summary(out / "summary.csv")
    assert row["global_step"] == "1" and float(row["train_loss"]) > 0
