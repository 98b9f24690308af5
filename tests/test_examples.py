"""Smoke-run the runnable examples (one that needs an optional dependency skips without it)."""

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


def test_adversarial_training_example_quick():
    pytest.importorskip("sklearn")
    proc = subprocess.run([sys.executable, str(EXAMPLES / "adversarial_training.py"), "--quick"], capture_output=True,
                          text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(EXAMPLES.parent)})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    header, rows = lines[-3].split(), [line.split() for line in lines[-2:]]
    assert header[:2] == ["model", "clean_acc"] and header[2].startswith("robust@") and header[3] == "train_s"
    assert [row[0] for row in rows] == ["clean", "adversarial"]
    for name, clean, robust, seconds in rows:
        clean, robust, seconds = float(clean), float(robust), float(seconds)
        assert 0 <= robust <= clean <= 1, (name, clean, robust)
        assert seconds >= 0


def test_the_readmes_python_api_snippets_run():
    """The README's "Python API" code blocks, run as written, one after the other in one
    namespace (the second uses the first's ``net``, ``x`` and ``label``)."""
    import re

    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme[readme.index("## Python API"):]
    section = section[:section.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) >= 2
    code = "\n".join(blocks[:2])
    code = code.replace("timeout=60", "timeout=20").replace("timeout=30", "timeout=20")  # a bound on CI
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(EXAMPLES.parent)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip(), proc.stdout
