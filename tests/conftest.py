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
