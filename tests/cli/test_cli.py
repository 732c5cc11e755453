"""The ``visionzoo`` command: list and info, through ``python -m visionzoo`` as a user runs it."""
import subprocess
import sys


import visionzoo
from visionzoo.cli import main


def test_list_prints_every_zoo_model(capsys):
    assert main(["list"]) == 0
    assert capsys.readouterr().out.split() == visionzoo.list_models()


def test_list_details_shows_params_and_paper_figures(capsys):
    names = visionzoo.list_models()
    assert main(["list", names[0], "--details"]) == 0
    out = capsys.readouterr().out
    assert names[0] in out and "paper GMACs" in out and "flop_counter" in out


def test_list_unknown_pattern_fails_clearly(capsys):
    assert main(["list", "vz_nothing_like_this*"]) == 1
    assert "no zoo model matches" in capsys.readouterr().err


def test_info_shows_counts_beside_the_card(capsys):
    names = visionzoo.list_models()
    assert main(["info", names[0]]) == 0
    out = capsys.readouterr().out
    assert "params:" in out and "GMACs:" in out and "feature_info" in out and "paper:" in out


def test_module_entry_point_runs():
    result = subprocess.run([sys.executable, "-m", "visionzoo", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "list" in result.stdout and "info" in result.stdout


def test_list_writes_the_readme_zoo_table(tmp_path, capsys):
    names = visionzoo.list_models()
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- zoo:start -->\nstale\n<!-- zoo:end -->\noutro\n")
    assert main(["list", names[0], "--details", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale" not in text and f"| {names[0]} |" in text and text.endswith("<!-- zoo:end -->\noutro\n")
    readme.write_text("no markers here\n")
    assert main(["list", names[0], "--details", "--readme", str(readme)]) == 2
    assert "<!-- zoo:start -->" in capsys.readouterr().err


def test_version_is_the_package_version():
    result = subprocess.run([sys.executable, "-m", "visionzoo", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == f"visionzoo {visionzoo.__version__}\n"


def test_a_reader_that_stops_early_gets_no_traceback():
    """`visionzoo list | head -1`: the reader leaves before the list is written (here: before the process starts)."""
    proc = subprocess.Popen([sys.executable, "-m", "visionzoo", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait() == 141 and err == ""
