"""Shared pytest fixtures."""

from pathlib import Path

import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture(scope="session")
def benchmarks_dir() -> Path:
    """The read-only third-party benchmark folder ``../shared/benchmarks``; skips when absent."""
    if not BENCHMARKS_DIR.is_dir():
        pytest.skip(f"benchmark data not found at {BENCHMARKS_DIR} (see shared/benchmarks/PROVENANCE.md)")
    return BENCHMARKS_DIR


def pytest_runtest_logreport(report):
    """With ``GPUOPT_FAILURE_LOG=FILE``, each failure's traceback is appended to FILE as soon as it
    happens (pytest prints tracebacks only in its final summary, which a run cut at a time cap,
    as on a short GPU lease, never reaches). Under xdist this runs in the controller."""
    import os

    path = os.environ.get("GPUOPT_FAILURE_LOG")
    if path and report.failed:
        with open(path, "a") as f:
            f.write(f"==== {report.nodeid} ({report.when})\n{report.longreprtext}\n\n")
