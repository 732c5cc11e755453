"""The shell entry points: tools/{train,eval,export,bench,dist_train}.sh."""
import shutil
import subprocess
import sys

import pytest

from _training import ROOT, subprocess_env

SCRIPTS = {"train.sh": "train", "eval.sh": "eval", "export.sh": "export", "bench.sh": "bench",
           "dist_train.sh": "train"}
# Records where it ran, with what and on which PYTHONPATH, in place of the interpreter.
FAKE_PYTHON = """#!/usr/bin/env bash
{ pwd; printf '%s\\n' "$@"; echo "PYTHONPATH=$PYTHONPATH"; } > "$RECORD"
"""


def _wired(command: str) -> bool:
    from visionzoo.cli import build_parser

    return command in build_parser()._subparsers._group_actions[0].choices


@pytest.mark.parametrize(
    "script, command, expected", [("train.sh", "train", "overrides"), ("eval.sh", "eval", "--checkpoint")]
)
def test_tool_scripts_reach_the_visionzoo_command(script, command, expected):
    if not _wired(command):
        pytest.skip(f"`visionzoo {command}` is not wired into visionzoo/cli.py yet")
    env = dict(subprocess_env(), PYTHON=sys.executable)
    done = subprocess.run(["bash", str(ROOT / "tools" / script), "--help"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and expected in done.stdout


def test_dist_train_without_arguments_prints_its_usage():
    done = subprocess.run(["bash", str(ROOT / "tools" / "dist_train.sh")], capture_output=True, text=True)
    assert done.returncode == 2 and "usage:" in done.stderr and "NPROC CONFIG" in done.stderr


def _fake_interpreter(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_scripts_run_where_they_are_called_and_pass_paths_untouched(script, tmp_path):
    """A relative --data-dir or --output given from the user's folder must be read there, not in the checkout."""
    work = tmp_path / "my project"
    work.mkdir()
    record = tmp_path / "record.txt"
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONPATH"}
    env.update(PYTHON=str(_fake_interpreter(tmp_path / "bin" / "python")), RECORD=str(record))
    args = ["--data-dir", "data/my digits", "--output", "runs/a"]
    extra = ["2"] if script == "dist_train.sh" else []
    done = subprocess.run(["bash", str(ROOT / "tools" / script), *extra, *args], cwd=work, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cwd, *argv, pythonpath = record.read_text().splitlines()
    assert cwd == str(work)
    assert argv[-len(args):] == args and SCRIPTS[script] in argv
    assert pythonpath == f"PYTHONPATH={ROOT}"


def test_scripts_find_the_checkouts_venv_from_their_own_location(tmp_path):
    checkout = tmp_path / "checkout"
    (checkout / "tools").mkdir(parents=True)
    shutil.copy(ROOT / "tools" / "train.sh", checkout / "tools" / "train.sh")
    _fake_interpreter(checkout / ".venv" / "bin" / "python")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {key: value for key, value in subprocess_env().items() if key not in ("PYTHON", "PYTHONPATH")}
    env["RECORD"] = str(tmp_path / "record.txt")
    done = subprocess.run(["bash", "../checkout/tools/train.sh", "recipe.yaml"], cwd=elsewhere, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    cwd, *argv, pythonpath = (tmp_path / "record.txt").read_text().splitlines()
    assert cwd == str(elsewhere) and argv == ["-m", "visionzoo", "train", "recipe.yaml"]
    assert pythonpath == f"PYTHONPATH={checkout}"


def test_export_from_another_folder_reads_and_writes_there(tmp_path):
    pytest.importorskip("onnxruntime")
    import timm
    import torch

    torch.save(timm.create_model("vz_shvit_s1", num_classes=3).state_dict(), tmp_path / "weights.pth")
    env = {key: value for key, value in subprocess_env().items() if key != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    done = subprocess.run(
        ["bash", str(ROOT / "tools" / "export.sh"), "vz_shvit_s1", "--checkpoint", "weights.pth", "--num-classes", "3",
         "--format", "onnx", "--img-size", "64", "--out", "exported/model.onnx", "--latency-repeats", "0"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "file: exported/model.onnx" in done.stdout and (tmp_path / "exported" / "model.onnx").is_file()
    assert not (ROOT / "exported").exists()
