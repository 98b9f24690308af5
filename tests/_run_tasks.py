"""Task functions for tests/test_runs.py (fault injection in bulk runs).

Spawned pool workers import this module, so it stays standard library only at import time;
gpuopt (and torch) are imported inside the functions.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def verify_sample_or_die(marker: str, mode: str, *args):
    """Wraps :func:`gpuopt.engine.tasks.verify_sample_task`, killing the worker first.

    ``mode``: ``"none"`` never dies; ``"exit_first"`` calls ``os._exit(1)`` on the first attempt
    and ``"kill_first"`` SIGKILLs itself on the first attempt (the attempt is noted in the file
    ``marker``, one line per attempt); ``"always"`` SIGKILLs itself on every attempt.
    """
    path = Path(marker)
    with open(path, "a") as f:  # one line per attempt, written before any death
        f.write(f"{os.getpid()}\n")
        f.flush()
        os.fsync(f.fileno())
    attempts = len(path.read_text().splitlines())
    if mode == "always" or (mode in ("exit_first", "kill_first") and attempts == 1):
        if mode == "exit_first":
            os._exit(1)
        os.kill(os.getpid(), signal.SIGKILL)
    from gpuopt.engine.tasks import verify_sample_task

    return verify_sample_task(*args)
