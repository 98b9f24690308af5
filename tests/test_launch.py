"""gpuopt.launch: the command line's default torch threads are the CPUs other jobs leave free,
measured from /proc/stat between the package's import and the choice."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from gpuopt import launch


def _sampled(monkeypatch, busy_ticks: int, own_seconds: float, wall: float, n: int = 2):
    """``free_cpus()`` after ``wall`` seconds in which the usable CPUs were busy ``busy_ticks``
    clock ticks in all, ``own_seconds`` of them this process's."""
    monkeypatch.setattr(launch, "usable_cpus", lambda: n)
    monkeypatch.setattr(launch, "_START", (100.0, 1000, 5.0, frozenset(range(n))))
    monkeypatch.setattr(launch, "_busy_jiffies", lambda cpus=None: 1000 + busy_ticks)
    monkeypatch.setattr(launch, "_own_cpu_seconds", lambda: 5.0 + own_seconds)
    monkeypatch.setattr(launch.time, "monotonic", lambda: 100.0 + wall)
    return launch.free_cpus()


def test_free_cpus_leaves_out_what_other_jobs_keep_busy(monkeypatch):
    hz = launch.os.sysconf("SC_CLK_TCK")
    # alone: our import kept one CPU busy for the second
    assert _sampled(monkeypatch, busy_ticks=hz, own_seconds=1.0, wall=1.0) == 2
    # another job on the second CPU
    assert _sampled(monkeypatch, busy_ticks=2 * hz, own_seconds=1.0, wall=1.0) == 1
    # half a CPU of other work rounds to none ... 0.7 of one to one
    assert _sampled(monkeypatch, busy_ticks=int(1.4 * hz), own_seconds=1.0, wall=1.0) == 2
    assert _sampled(monkeypatch, busy_ticks=int(1.7 * hz), own_seconds=1.0, wall=1.0) == 1
    # never fewer than one, however busy
    assert _sampled(monkeypatch, busy_ticks=8 * hz, own_seconds=1.0, wall=1.0, n=4) == 1
    # too short an interval to tell, or counters that went back: every usable CPU
    assert _sampled(monkeypatch, busy_ticks=2 * hz, own_seconds=0.05, wall=0.05) == 2
    assert _sampled(monkeypatch, busy_ticks=-5, own_seconds=1.0, wall=1.0) == 2


@pytest.mark.skipif(launch._busy_jiffies() is None or launch.usable_cpus() < 2, reason="needs /proc/stat and 2 CPUs")
def test_both_samples_read_the_same_cpus(monkeypatch):
    """A CPU that joins the affinity between the samples would add its busy ticks since boot
    (found by review): the second sample reads the first one's CPUs."""
    cpus = sorted(launch.os.sched_getaffinity(0))
    monkeypatch.setattr(launch, "_START", None)
    monkeypatch.setattr(launch, "_affinity", lambda: frozenset(cpus[:1]))
    launch.mark_start()
    monkeypatch.setattr(launch, "_affinity", lambda: frozenset(cpus))
    monkeypatch.setattr(launch.time, "monotonic", lambda: launch._START[0] + 0.5)
    assert launch.free_cpus() >= len(cpus) - 1  # one CPU's half second at most, not its ticks since boot


def test_free_cpus_without_a_first_sample_or_proc_stat(monkeypatch):
    monkeypatch.setattr(launch, "usable_cpus", lambda: 3)
    monkeypatch.setattr(launch, "_START", None)
    assert launch.free_cpus() == 3
    monkeypatch.setattr(launch, "_START", (0.0, None, 0.0, None))
    assert launch.free_cpus() == 3


@pytest.mark.skipif(launch._busy_jiffies() is None or launch.usable_cpus() < 2, reason="needs /proc/stat and 2 CPUs")
def test_a_busy_process_beside_us_is_left_its_cpu(monkeypatch):
    """A real busy loop in another process, on one of our CPUs: at least one CPU is left to it."""
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # under way
        monkeypatch.setattr(launch, "_START", None)
        launch.mark_start()
        time.sleep(1.0)
        assert launch.free_cpus() <= launch.usable_cpus() - 1
    finally:
        busy.kill()
        busy.wait()
