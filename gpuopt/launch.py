"""How many CPU threads the command line gives torch: the CPUs that other jobs leave free.

torch's CPU operations run on libgomp's thread pool, whose waiting threads spin before they
sleep. That is right on an idle machine (``OMP_WAIT_POLICY=PASSIVE`` made mnist-net_256x4
prop_3_0.05 take 16-23 s instead of 9.5-9.9 s with 2 threads on this project's 2-core machine),
and ruinous when another job keeps one of the CPUs busy: each parallel operation then waits for a
thread the other job holds, and an ACAS Xu instance bounded 45 boxes in 30 s instead of 351 in
4 s. So the command line measures, while it starts (the interpreter and torch's import, about a
second), how much CPU time other processes took on the CPUs it may use, and leaves those out:
``threads = usable CPUs - round(other jobs' busy CPUs)``, at least 1.

:func:`mark_start` runs first thing in ``gpuopt/__init__.py`` (standard library only, before
torch loads); :func:`free_cpus` reads the second sample. Where ``/proc/stat`` is not there (not
Linux), every usable CPU counts as free.
"""

from __future__ import annotations

import os
import time

__all__ = ["mark_start", "free_cpus", "usable_cpus"]

_START: tuple | None = None  # (monotonic seconds, busy jiffies of the CPUs, own CPU seconds, the CPUs)


def _affinity() -> frozenset | None:
    """The CPUs this process may run on, where the platform says (else None)."""
    try:
        return frozenset(os.sched_getaffinity(0))
    except AttributeError:  # not on this platform
        return None


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity where the platform says; else all)."""
    cpus = _affinity()
    return max(1, len(cpus)) if cpus is not None else os.cpu_count() or 1


def _busy_jiffies(cpus=None) -> int | None:
    """Busy clock ticks (all but idle and iowait) summed over ``cpus`` (default: those this process
    may use), from ``/proc/stat``; None where unreadable."""
    try:
        cpus = _affinity() if cpus is None else cpus
        mine = {f"cpu{c}" for c in cpus}
        busy = 0
        with open("/proc/stat", encoding="ascii") as f:
            for line in f:
                parts = line.split()
                if parts and parts[0] in mine:
                    ticks = [int(v) for v in parts[1:9]]  # user nice system idle iowait irq softirq steal
                    busy += sum(ticks) - ticks[3] - ticks[4]
        return busy
    except (OSError, ValueError, IndexError, AttributeError):
        return None


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def mark_start() -> None:
    """Take the first sample (once per process)."""
    global _START
    if _START is None:
        cpus = _affinity()
        _START = (time.monotonic(), None if cpus is None else _busy_jiffies(cpus), _own_cpu_seconds(), cpus)


def free_cpus(min_seconds: float = 0.2) -> int:
    """The usable CPUs less those other processes kept busy since :func:`mark_start` (rounded), at
    least 1; every usable CPU when there is no first sample, no ``/proc/stat``, or under
    ``min_seconds`` between the samples (too short to tell)."""
    n = usable_cpus()
    if _START is None or _START[1] is None:
        return n
    t0, busy0, own0, cpus = _START
    busy1, wall = _busy_jiffies(cpus), time.monotonic() - t0  # the same CPUs as the first sample
    if busy1 is None or wall < min_seconds or busy1 < busy0:
        return n
    others = ((busy1 - busy0) / os.sysconf("SC_CLK_TCK") - (_own_cpu_seconds() - own0)) / wall
    return max(1, n - max(0, int(round(others))))
