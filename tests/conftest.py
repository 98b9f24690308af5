"""Shared pytest fixtures."""

from pathlib import Path

import pytest

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"


@pytest.fixture(autouse=True, scope="session")
def one_thread_for_shared_fixtures():
    """Module- and session-scoped fixtures are built before any test's own fixtures: they run
    on one torch thread too."""
    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


@pytest.fixture(autouse=True)
def one_thread(request, monkeypatch):
    """Every test runs torch on one thread, and so does the CLI, which otherwise gives torch every
    usable CPU (it owns its process). In a test worker beside another (``pytest -n 2`` on 2
    cores) more threads oversubscribe the cores, and torch's threads then wait on each other at
    every small op: a verify that takes 2 s alone took 98 s. A test marked ``all_cpus`` keeps the
    CLI's own choice. Each test's thread count is restored after it."""
    import torch

    import gpuopt.cli
    import gpuopt.engine.beside

    saved = torch.get_num_threads()
    if request.node.get_closest_marker("all_cpus") is None:
        monkeypatch.setattr(gpuopt.cli, "_usable_cpus", lambda: 1)
        monkeypatch.setattr(gpuopt.cli, "free_cpus", lambda: 1)
        # no CPU to spare either: MILPs beside activation splitting only where a test asks for them
        monkeypatch.setattr(gpuopt.engine.beside, "spare_cpus", lambda: 0)
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


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
