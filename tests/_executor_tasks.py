"""Task functions for tests/test_executor.py.

They live in their own module (standard library only at import) so that spawned workers can
import them; a worker that imports this module must not pull in torch or gpuopt.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path


def add(a, b, *, scale=1):
    return (a + b) * scale


def echo(x):
    return x


def raise_value_error(message):
    raise ValueError(message)


def raise_memory_error():
    raise MemoryError("cannot allocate 1 TiB")


def raise_timeout_error():
    raise TimeoutError("Task timeout")  # a task's own TimeoutError is an error, not a timeout


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def sleep_then_mark(seconds, finished, started):
    """Writes its pid to ``started``, sleeps, then writes ``finished``."""
    Path(started).write_text(str(os.getpid()))
    time.sleep(seconds)
    Path(finished).write_text("finished")
    return seconds


def exit_abruptly(code=3):
    os._exit(code)


def segfault():
    ctypes.string_at(0)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def crash_first_time(marker, value):
    """Dies on the first attempt (no marker file yet), returns ``value`` on the next."""
    path = Path(marker)
    if not path.exists():
        path.write_text("attempted")
        os._exit(5)
    return value


def crash_if(flag, value):
    if flag:
        os._exit(7)
    return value


def return_unpicklable():
    return lambda: None


def worker_info():
    return {
        "pid": os.getpid(),
        "torch_imported": "torch" in sys.modules,
        "gpuopt_imported": "gpuopt" in sys.modules,
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        "cwd": os.getcwd(),
    }


def pid_after(seconds):
    time.sleep(seconds)
    return os.getpid()


def torch_threads():
    import torch

    return torch.get_num_threads()


class NeedsTwoArgs(Exception):
    """Its pickle (args=(message,)) cannot rebuild it: unpickling calls NeedsTwoArgs(message)."""

    def __init__(self, a, b):
        super().__init__(f"{a} and {b}")


def raise_needs_two_args():
    raise NeedsTwoArgs("x", "y")


def raise_holding_lambda():
    raise ValueError(lambda: None)


def call_sys_exit():
    sys.exit(0)
