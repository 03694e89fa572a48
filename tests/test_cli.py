"""`skintumor COMMAND` (and `python -m skintumor`): one front door to every tool."""

import subprocess
import sys

from skintumor.__main__ import COMMANDS, main

from conftest import REPO


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    names = {"train", "check", "report", "explain", "export", "predict", "serve"}
    assert all(name in out for name in names)
    assert main(["nonsense"]) == 2 and set(COMMANDS) == names


def test_commands_reach_their_tools(tiny_folder, tiny_run, capsys):
    assert main(["check", str(tiny_folder)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["explain", str(tiny_run / "missing")]) == 2
    assert "metrics_val.json: not found" in capsys.readouterr().err


def test_python_dash_m_skintumor_runs_the_same_front_door():
    proc = subprocess.run([sys.executable, "-m", "skintumor", "--help"], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and "predict" in proc.stdout
