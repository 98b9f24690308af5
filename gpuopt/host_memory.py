"""Keep freed host memory in the process for reuse (glibc ``mallopt``).

Standard library only, and importable on its own (the process pool's workers run this file
without importing gpuopt or torch, :mod:`gpuopt.engine.executor`).

glibc serves every allocation above its mmap threshold with a fresh ``mmap`` and unmaps it on
free, and it returns the top of the heap to the system once more than its trim threshold lies
free there (128 KiB each by default; the threshold rises on its own only up to the largest block
freed so far). Batched bound propagation allocates and frees tensors of megabytes thousands of
times a second, so each new tensor paid page faults on first touch: on ACAS Xu's input splitting,
one ``clamp`` of a few MB cost three times its arithmetic. :func:`keep_freed_memory` raises the
mmap threshold to glibc's maximum (32 MiB on 64-bit systems) and the trim threshold to 256 MiB, so
that such blocks come from, and go back to, the heap: on four ACAS Xu instances the
verification took 6-15% less time, with the same boxes.

The cost is memory the process keeps after a peak (up to the trim threshold above what it uses,
per process: a pool of many workers multiplies it). 256 MiB ran as fast as 1 GiB on those four
instances (70.3 s against 69.2 s, within the noise), with a peak of 682 MB against 744 MB.
It is process-wide, so gpuopt applies it only in processes it owns (the command line and its
pool's workers), never on ``import gpuopt``; library users may call it themselves. Setting the
environment variable ``GPUOPT_KEEP_FREED_MEMORY=0`` turns it off.
"""

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

#: glibc's ``mallopt`` parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
#: glibc's largest mmap threshold on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)
MMAP_THRESHOLD = 32 << 20
TRIM_THRESHOLD = 256 << 20
TOP_PAD = 64 << 20

_applied = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap threshold, trim threshold and top pad (see the module docstring), once per
    process. Returns whether they are in effect: ``False`` off glibc (musl, macOS, Windows),
    where ``mallopt`` refuses them, or with ``GPUOPT_KEEP_FREED_MEMORY=0``."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("GPUOPT_KEEP_FREED_MEMORY", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        libc_version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; absent off glibc
    except (AttributeError, ValueError, OSError):
        return False
    if not libc_version or not libc_version.startswith("glibc"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on a refused value
    _applied = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD), (_M_TRIM_THRESHOLD, TRIM_THRESHOLD), (_M_TOP_PAD, TOP_PAD)))
    return _applied
