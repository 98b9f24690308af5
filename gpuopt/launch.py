"""What the command line settles before torch loads: OpenMP threads that sleep while they wait.

torch's CPU operations run on libgomp's thread pool. By default a waiting libgomp thread spins
before it sleeps, and ``gpuopt verify`` uses every CPU the process may use. When another job
keeps one of those CPUs busy, each parallel operation then waits for a thread that the other job
holds: on this project's 2-core machine an ACAS Xu instance bounded 45 boxes in 30 s instead of
351 in 4 s. ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep at once, which costs nothing
measurable on an idle machine (see the README) and removes that collapse.

libgomp reads the variable once, when torch loads it, so it must be set before ``import torch``:
``gpuopt/__init__.py`` calls :func:`prepare_command_line` first thing. It acts only in the
``gpuopt`` command line's own process (the console script or ``python -m gpuopt``), never in a
program that imports gpuopt as a library, and never over a value the user set. Standard library
only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["is_command_line", "prepare_command_line"]


def is_command_line() -> bool:
    """Whether this process is the ``gpuopt`` command line: the console script (``argv[0]`` named
    ``gpuopt``) or ``python [options] -m gpuopt``."""
    if sys.argv and Path(sys.argv[0]).name == "gpuopt":
        return True
    argv = list(getattr(sys, "orig_argv", ()))  # Python 3.10+: the interpreter's own arguments
    return any(a == "-m" and argv[i + 1:i + 2] == ["gpuopt"] for i, a in enumerate(argv[1:], 1))


def prepare_command_line() -> None:
    """In the command line's process, before torch loads: ``OMP_WAIT_POLICY=PASSIVE`` unless set
    (``GPUOPT_OMP_PASSIVE=0`` leaves it alone)."""
    if "torch" in sys.modules or os.environ.get("GPUOPT_OMP_PASSIVE", "1") == "0" or not is_command_line():
        return
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
