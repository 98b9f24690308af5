"""gpuopt.launch: the command line's process asks libgomp for passive waits before torch loads;
a program importing gpuopt as a library is left alone, and so is a value the user set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpuopt import launch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, orig, expected", [
    (["/venv/bin/gpuopt", "verify"], ["/venv/bin/python", "/venv/bin/gpuopt", "verify"], True),
    (["/repo/gpuopt/__main__.py", "verify"], ["python3", "-m", "gpuopt", "verify"], True),
    (["-m"], ["python3", "-X", "dev", "-m", "gpuopt"], True),  # while runpy imports the package
    (["script.py"], ["python3", "script.py"], False),
    (["-c"], ["python3", "-c", "import gpuopt"], False),
    (["/x/pytest"], ["python3", "-m", "pytest", "-m", "gpu"], False),
    (["-m"], ["python3", "-m", "gpuopt.cli"], False),
])
def test_is_command_line(argv, orig, expected, monkeypatch):
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "orig_argv", orig, raising=False)
    assert launch.is_command_line() is expected


def test_prepare_command_line_sets_passive_waits_only_where_it_may(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/gpuopt", "verify"])
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GPUOPT_OMP_PASSIVE", raising=False)
    launch.prepare_command_line()  # torch is loaded in this process already: too late, nothing set
    assert "OMP_WAIT_POLICY" not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    launch.prepare_command_line()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's value stays
    launch.prepare_command_line()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setenv("GPUOPT_OMP_PASSIVE", "0")  # switched off
    launch.prepare_command_line()
    assert "OMP_WAIT_POLICY" not in os.environ


def _policy_after_import(*cmd) -> str:
    code = "import os, gpuopt, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    env = {"PATH": "", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, *cmd, code], capture_output=True, text=True, env=env,
                          timeout=120).stdout.strip()


def test_a_library_import_leaves_openmp_alone():
    assert _policy_after_import("-c") == "None"
