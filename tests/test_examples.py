"""Smoke-run the runnable examples (those that need no optional dependency)."""

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["verify_torch_model.py"])
def test_example_runs(script):
    proc = subprocess.run([sys.executable, str(EXAMPLES / script)], capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(EXAMPLES.parent)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["eps", "status"]
    statuses = [line.split()[1] for line in lines[1:] if line.split()[0][0].isdigit()]
    assert len(statuses) == 5 and set(statuses) <= {"sat", "unsat", "unknown", "timeout"}
    assert statuses[0] == "unsat"  # a tiny ball around a point is always provable here
