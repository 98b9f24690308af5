"""Task functions for tests/test_orchestrator.py (spawned workers import this module, so it
stays standard library only at import time)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def sleep_task(seconds: float, result: str, budget: float, submitted: float) -> dict:
    """Sleeps, then reports ``result`` with its wall-clock start and end."""
    start = time.time()
    time.sleep(seconds)
    return {"kind": result, "start": start, "end": time.time()}


def die_first(marker: str, how: str, fn, *args):
    """Runs ``fn(*args)``, but kills its own worker on the first attempt (noted in ``marker``):
    ``how`` is ``"exit"`` (``os._exit(1)``) or ``"kill"`` (SIGKILL)."""
    path = Path(marker)
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    if len(path.read_text().splitlines()) == 1:
        if how == "exit":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
    return fn(*args)
