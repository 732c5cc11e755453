"""What a training run must survive: bad checkpoints, kills between writes, a full disk, two runs on one folder,
wrong data, a diverging loss, changed settings on resume, and the one-line errors of the train/eval commands."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from _training import ENTRY_SCRIPT, TEST_MODEL, TINY_OVERRIDES, parse_train_cli, subprocess_env
from visionzoo.cli import main as cli_main
from visionzoo.data.digits import make_digits
from visionzoo.data.loader import DatasetError, create_folder_dataset, load_rgb
from visionzoo.engine import checkpoint as checkpoint_module
from visionzoo.engine.checkpoint import CheckpointWriteError, OutputLock, atomic_save
from visionzoo.engine.config import ConfigError
from visionzoo.engine.evaluate import run_eval
from visionzoo.engine.logging import read_summary
from visionzoo.engine.train import DivergenceError, run_train
from visionzoo.models import CheckpointError
from visionzoo.models._checkpoint import read_checkpoint

# 60 train and 20 val digits, three optimizer steps of 16 per epoch.
SMALL = [*TINY_OVERRIDES, "train.global_batch_size=16", "optim.lr_base_batch=16", "train.epochs=1"]


def _train(data: Path, output: Path, *extra: str) -> int:
    return run_train(parse_train_cli("train", "shvit_s1", *SMALL, *extra, "--data-dir", str(data), "--output", str(output)))


def _eval(checkpoint: Path, data: Path, *extra: str) -> int:
    return run_eval(parse_train_cli("eval", TEST_MODEL, "--checkpoint", str(checkpoint), "--data-dir", str(data),
                           "--input-size", "32", "--workers", "0", *extra))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits")
    assert make_digits(out, size=32, max_per_class=8) == {"train": 60, "val": 20}
    return out


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory) -> Path:
    """One epoch without EMA: a finished run to resume, evaluate and break."""
    out = tmp_path_factory.mktemp("trained") / "run"
    torch.set_num_threads(1)
    assert _train(digits, out) == 0
    return out


def _copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(run, target, ignore=shutil.ignore_patterns(".lock"))
    return target


def _weights_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# --- every checkpoint load goes through the safe loader -------------------------------------------------------
def test_resume_and_eval_refuse_a_malicious_checkpoint_without_running_it(digits, trained, tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "payload": _RunsCode(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused to load") as refused:
        _train(digits, tmp_path / "out", "--resume", str(evil))
    assert "weights_only=False" not in str(refused.value)
    with pytest.raises(CheckpointError, match="refused to load"):
        _eval(evil, digits)  # without --num-classes: the class count is read from the file first
    assert not marker.exists()


def test_truncated_and_plain_checkpoints_get_clear_resume_errors(digits, trained, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((trained / "last.pth").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="truncated, corrupt or not written by torch.save") as error:
        _train(digits, tmp_path / "a", "--resume", str(truncated))
    assert "weights_only" not in str(error.value)
    plain = tmp_path / "weights.pth"
    torch.save(read_checkpoint(trained / "last.pth")["model"], plain)
    with pytest.raises(CheckpointError, match=r"not a visionzoo training checkpoint .*model.checkpoint="):
        _train(digits, tmp_path / "b", "--resume", str(plain))


def test_resume_with_another_model_or_head_is_refused(digits, trained, tmp_path):
    with pytest.raises(ConfigError, match=r"model.name: 'vz_shvit_s1' -> 'vz_shvit_s2'"):
        run_train(parse_train_cli("train", "shvit_s2", *SMALL, "model.name=vz_shvit_s2", "--data-dir", str(digits),
                         "--output", str(tmp_path / "s2"), "--resume", str(trained / "last.pth")))
    with pytest.raises(ConfigError, match="train.global_batch_size: 16 -> 32"):
        _train(digits, tmp_path / "b", "train.global_batch_size=32", "--resume", str(trained / "last.pth"))


# --- no result is lost ------------------------------------------------------------------------------------------
KILL_AFTER_LAST = """
import os, runpy, sys
from pathlib import Path
from visionzoo.engine import train
write = train.atomic_save
def write_then_die(state, path):
    write(state, path)
    if Path(path).name == "last.pth" and state["step_in_epoch"] == 0:
        os._exit(9)  # killed between last.pth and best.pth / summary.csv
train.atomic_save = write_then_die
sys.argv = sys.argv[1:]  # drop "-c": the entry script and its arguments remain
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_kill_between_last_and_best_is_repaired_on_resume(digits, tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, "-c", KILL_AFTER_LAST, str(ENTRY_SCRIPT), "train", "shvit_s1", *SMALL,
               "--data-dir", str(digits), "--output", str(out)]
    killed = subprocess.run(command, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert (out / "last.pth").is_file() and not (out / "best.pth").exists() and not (out / "summary.csv").exists()

    assert _train(digits, out, "--resume", "auto") == 0  # the run had finished its only epoch
    last, best = read_checkpoint(out / "last.pth"), read_checkpoint(out / "best.pth")
    assert best["best"] == last["best"] and best["best"]["epoch"] == 1 and best["epoch"] == 1
    assert _weights_equal(best["model"], last["model"])
    rows = read_summary(out / "summary.csv")
    assert [row["epoch"] for row in rows] == ["1"] and float(rows[0]["top1"]) == best["best"]["metric"]


def test_a_full_disk_leaves_no_temporary_and_the_run_resumes(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    save = torch.save

    def full_disk_on_best(obj, handle):
        if Path(handle.name).name.startswith(".best.pth."):
            handle.write(b"x" * 1000)
            raise RuntimeError("[enforce fail at inline_container.cc:783] . unexpected pos 1000 vs 812")
        save(obj, handle)

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk_on_best)
    with pytest.raises(CheckpointWriteError, match=r"could not write .*best.pth: the disk holding .* is full"):
        _train(digits, out, "train.epochs=2")
    monkeypatch.undo()
    assert sorted(path.name for path in out.iterdir() if path.name != ".lock") == ["config.yaml", "last.pth"]

    assert _train(digits, out, "train.epochs=2", "--resume", "auto") == 0
    assert read_checkpoint(out / "best.pth")["best"]["epoch"] in (1, 2)
    assert [row["epoch"] for row in read_summary(out / "summary.csv")] == ["1", "2"]


def test_atomic_save_keeps_the_old_file_when_a_write_fails(tmp_path, monkeypatch):
    target = tmp_path / "last.pth"
    atomic_save({"step": torch.tensor(1)}, target)

    def no_space(obj, handle):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", no_space)
    with pytest.raises(CheckpointWriteError, match="is full"):
        atomic_save({"step": torch.tensor(2)}, target)
    assert [path.name for path in tmp_path.iterdir()] == ["last.pth"]
    assert read_checkpoint(target)["step"] == 1


def test_a_second_run_on_one_folder_is_refused_and_a_dead_holder_does_not_block(digits, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = OutputLock(out)
    try:
        with pytest.raises(CheckpointError, match=rf"{out} is in use by another run \(process {os.getpid()}\)"):
            _train(digits, out)
    finally:
        holder.release()
    hold = "import sys, time; from visionzoo.engine.checkpoint import OutputLock; OutputLock(sys.argv[1]); " \
           "print('locked', flush=True); time.sleep(600)"
    process = subprocess.Popen([sys.executable, "-c", hold, str(out)], env=subprocess_env(), stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match="in use by another run"):
            OutputLock(out)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    OutputLock(out).release()  # the kernel dropped the dead process's lock


def test_stale_temporaries_of_a_killed_write_are_removed(digits, trained, tmp_path):
    out = _copy_run(trained, tmp_path)
    (out / ".last.pth.abc123.tmp").write_bytes(b"half a checkpoint")
    assert _train(digits, out, "--resume", "auto") == 0
    assert not list(out.glob("*.tmp"))


def test_an_output_folder_that_cannot_be_written_is_an_error(digits, trained, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=f"cannot write the run folder {blocker / 'run'}"):
        _train(digits, blocker / "run")
    code = cli_main(["eval", TEST_MODEL, "--checkpoint", str(trained / "last.pth"), "--data-dir", str(digits),
                     "--output", str(blocker / "eval.json")])
    err = capsys.readouterr().err
    assert code == 2 and f"cannot write the results file {blocker / 'eval.json'}" in err
    assert "Traceback" not in err


# --- training refuses wrong data ----------------------------------------------------------------------------------
def _two_class_folder(root: Path, train_classes=("a", "b"), val_classes=("a", "b"), per_class=4) -> Path:
    rng = np.random.default_rng(0)
    for split, classes in (("train", train_classes), ("val", val_classes)):
        for name in classes:
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for index in range(per_class):
                pixels = rng.integers(0, 255, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{index}.png")
    return root


def test_class_count_is_taken_from_the_folder_or_a_mismatch_refused(tmp_path, capsys):
    data = _two_class_folder(tmp_path / "data", train_classes=("a", "b", "c"), val_classes=("a", "b", "c"))
    base = [o for o in SMALL if not o.startswith("model.num_classes")] + ["train.global_batch_size=4",
                                                                          "optim.lr_base_batch=4", "aug.mixup=0",
                                                                          "aug.cutmix=0"]
    args = parse_train_cli("train", "shvit_s1", *base, "--data-dir", str(data), "--output", str(tmp_path / "run"))
    assert run_train(args) == 0
    assert "model.num_classes: 3" in capsys.readouterr().out
    assert read_checkpoint(tmp_path / "run" / "last.pth")["config"]["model"]["num_classes"] == 3
    assert "num_classes: 3" in (tmp_path / "run" / "config.yaml").read_text()
    for configured in ("2", "5"):
        with pytest.raises(ConfigError, match=f"model.num_classes={configured} but .* holds 3 class folders"):
            run_train(parse_train_cli("train", "shvit_s1", *base, f"model.num_classes={configured}", "--data-dir", str(data),
                             "--output", str(tmp_path / configured)))


def test_train_and_val_with_different_classes_are_refused(tmp_path):
    data = _two_class_folder(tmp_path / "data", train_classes=("0", "2"), val_classes=("0", "1", "2"))
    (data / "train" / "1").mkdir()  # an empty class folder: timm's reader would shift every later index
    with pytest.raises(DatasetError, match=r"different classes \(only .*val has images of 1\)"):
        _train(data, tmp_path / "run")


def test_odd_per_device_batch_with_mixup_is_refused_before_training(digits, tmp_path):
    with pytest.raises(ConfigError, match=r"per-device batch is 15 \(odd\)"):
        _train(digits, tmp_path / "run", "train.global_batch_size=15")
    assert not (tmp_path / "run" / "last.pth").exists()


def _header_only_png(path: Path, width: int, height: int) -> None:
    """A PNG that declares ``width x height`` pixels but holds almost none: what a decompression bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_unusable_images_are_skipped_counted_and_reported(digits, trained, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(digits, data)
    (data / "val" / "3" / "empty.png").write_bytes(b"")
    (data / "val" / "4" / "notes.png").write_text("not an image")
    _header_only_png(data / "val" / "5" / "bomb.png", 30000, 30000)  # over twice Pillow's limit: refused on open
    _header_only_png(data / "val" / "6" / "big.png", 10000, 10000)  # over the limit: only a warning from Pillow
    _header_only_png(data / "val" / "7" / "truncated.png", 32, 32)  # header fine, pixels cannot be decoded
    val = create_folder_dataset(data, "val", None, substitute=False)
    assert len(val) == 21 and len(val.skipped) == 4
    assert {Path(path).name: problem.split(" (")[0] for path, problem in val.skipped} == {
        "empty.png": "empty file", "notes.png": "not a readable image", "bomb.png": "decompression bomb",
        "big.png": "decompression bomb",
    }
    assert "skipped 4 of 25 images" in val.notice()

    with pytest.warns(UserWarning, match="truncated.png: its pixels cannot be decoded"):
        assert _eval(trained / "last.pth", data, "--output", str(tmp_path / "eval.json")) == 0
    results = json.loads((tmp_path / "eval.json").read_text())
    assert results["images"] == 20 and results["unreadable"] == 1 and results["skipped"] == 5
    assert "(5 unreadable images skipped)" in capsys.readouterr().out

    (data / "train" / "0" / "empty.png").write_bytes(b"")
    with pytest.warns(UserWarning, match="truncated.png"):  # the run's validation meets it each epoch
        assert _train(data, tmp_path / "run") == 0
    err = capsys.readouterr().err
    assert "skipped 1 of 61 images" in err and "empty.png: empty file" in err


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    data = _two_class_folder(tmp_path / "data")
    deep = np.full((8, 8), 32896, dtype=np.uint16)  # 128 x 257: mid-grey in 16 bits
    deep[0, 0] = 65535
    Image.fromarray(deep).save(data / "train" / "a" / "deep.png")
    train = create_folder_dataset(data, "train", None)
    assert train.sixteen_bit == 1 and "16-bit grayscale" in train.notice()
    image = load_rgb(str(data / "train" / "a" / "deep.png"))
    pixels = np.asarray(image)
    assert image.mode == "RGB" and pixels[1, 1].tolist() == [128] * 3 and pixels[0, 0].tolist() == [255] * 3


# --- a diverged loss stops without a bad best -------------------------------------------------------------------
def test_a_diverging_run_stops_with_the_last_good_checkpoint_kept(digits, trained, tmp_path):
    out = _copy_run(trained, tmp_path)
    good = read_checkpoint(out / "last.pth")
    with pytest.raises(DivergenceError, match=r"training diverged in epoch 2 .*last.pth still holds the last good"):
        _train(digits, out, "train.epochs=2", "optim.lr=1e9", "--resume", "auto")
    last, best = read_checkpoint(out / "last.pth"), read_checkpoint(out / "best.pth")
    assert last["epoch"] == 1 and _weights_equal(last["model"], good["model"])
    assert best["best"]["epoch"] == 1 and len(read_summary(out / "summary.csv")) == 1


def test_a_run_diverging_in_its_first_epoch_writes_no_checkpoint(digits, tmp_path):
    with pytest.raises(DivergenceError, match="no checkpoint was written"):
        _train(digits, tmp_path / "run", "optim.lr=1e9")
    assert not (tmp_path / "run" / "last.pth").exists() and not (tmp_path / "run" / "best.pth").exists()


# --- resume with a changed config -------------------------------------------------------------------------------
def test_resume_applies_a_new_lr_and_schedule_and_config_yaml_says_so(digits, trained, tmp_path, capsys):
    out = _copy_run(trained, tmp_path)
    assert _train(digits, out, "train.epochs=2", "optim.lr=1e-4", "sched.min_lr=1e-4", "--resume", "auto") == 0
    assert "optim.lr: 0.002 -> 0.0001 (applied from here on)" in capsys.readouterr().out
    last = read_checkpoint(out / "last.pth")
    # Constant lr 1e-4 once min_lr equals it: the optimizer ran with the new value, not the checkpoint's.
    lrs = [group["lr"] for group in last["optimizer"]["param_groups"]]
    assert lrs == pytest.approx([1e-4] * len(lrs))
    assert float(read_summary(out / "summary.csv")[1]["lr"]) == pytest.approx(1e-4)
    text = (out / "config.yaml").read_text()
    assert "# resumed at epoch 1 step 0 with" in text and "optim.lr 0.002 -> 0.0001" in text
    assert "lr: 0.0001" in text and last["config"]["optim"]["lr"] == 1e-4


# --- eval ---------------------------------------------------------------------------------------------------------
def test_eval_ema_on_a_checkpoint_without_ema_fails(digits, trained):
    with pytest.raises(CheckpointError, match="holds no EMA weights .* evaluate it without --ema"):
        _eval(trained / "last.pth", digits, "--ema")


def test_each_eval_writes_its_own_result_file(digits, trained, tmp_path, capsys):
    run = _copy_run(trained, tmp_path)
    assert _eval(run / "best.pth", digits) == 0
    assert _eval(run / "best.pth", digits) == 0
    written = sorted(run.glob("eval_*.json"))
    assert len(written) == 2 and all(f"eval_{TEST_MODEL}_best_val_" in path.name for path in written)
    out = capsys.readouterr().out
    assert out.index("top-1") < out.index("wrote")  # metrics are printed before the file is written


# --- one-line errors on the command line ------------------------------------------------------------------------
def test_yaml_errors_and_wrong_types_are_one_line_errors(digits, tmp_path, capsys):
    recipe = tmp_path / "broken.yaml"
    recipe.write_text("model:\n  name: vz_shvit_s1\n optim: {lr: 1e-3\n")
    assert cli_main(["train", str(recipe), "--data-dir", str(digits), "--output", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert f"config {recipe.resolve()} is not valid YAML (line 3" in err and "Traceback" not in err
    assert cli_main(["train", "shvit_s1", "optim.lr=fast", "--data-dir", str(digits)]) == 2
    assert "optim.lr='fast' must be a number" in capsys.readouterr().err


def test_overrides_may_follow_the_options(digits):
    args = parse_train_cli("train", "shvit_s1", "optim.lr=1e-3", "--data-dir", str(digits), "model.num_classes=10",
                  "--output", "x", "train.epochs=2")
    assert args.overrides == ["optim.lr=1e-3", "model.num_classes=10", "train.epochs=2"]
    assert args.data_dir == str(digits) and args.output == "x"


# --- the docs' run figures come from a tool -----------------------------------------------------------------------
def test_the_report_tool_fills_the_marked_block_from_the_run(trained, tmp_path):
    from visionzoo.engine.report import main as report_main

    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- run:digits:start -->\ntyped by hand\n<!-- run:digits:end -->\noutro\n")
    assert report_main([str(trained), "--markdown", str(doc)]) == 0
    text = doc.read_text()
    best = read_checkpoint(trained / "best.pth")["best"]
    (row,) = read_summary(trained / "summary.csv")
    assert "typed by hand" not in text and text.startswith("intro\n") and text.endswith("outro\n")
    assert f"`best.pth` is epoch 1 at top1 {best['metric']:.1f} %" in text and "no EMA" in text
    assert f"| val top-1 (%) | {float(row['top1']):.1f} |" in text and "EMA val top-1" not in text
    assert report_main([str(trained), "--markdown", str(tmp_path / "missing.md")]) == 2
    (tmp_path / "plain.md").write_text("no markers\n")
    assert report_main([str(trained), "--markdown", str(tmp_path / "plain.md")]) == 2
