"""The shell entry points: tools/train.sh, tools/dist_train.sh, tools/eval.sh."""
import subprocess
import sys

import pytest

from _training import ROOT, subprocess_env


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
