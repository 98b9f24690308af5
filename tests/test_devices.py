"""Device checks and the background CUDA warm-up (exercised without a GPU by standing in for the
tensor factory the warm-up calls)."""

from __future__ import annotations

import pytest
import torch

from gpuopt import devices


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(devices, "_warmed", {})


def test_the_cpu_needs_no_warm_up(fresh):
    assert devices.warm_up("cpu") is None
    assert devices.warm_up(torch.device("cpu")) is None
    assert devices._warmed == {}


def test_a_cuda_device_is_warmed_once_per_process_in_the_background(fresh, monkeypatch):
    calls = []
    real_ones = torch.ones

    def fake_ones(shape, device=None):
        calls.append(str(device))
        return real_ones(shape)  # on the CPU: the rest of the warm-up runs as it would

    monkeypatch.setattr(torch, "ones", fake_ones)
    t = devices.warm_up("cuda:0")
    assert t is not None and t.daemon
    t.join(10)
    assert calls == ["cuda:0"]
    assert devices.warm_up(torch.device("cuda:0")) is t  # the same thread: nothing runs twice
    assert devices.warm_up("cuda") is t  # torch's default device is cuda:0
    devices.warm_up("cuda:1").join(10)
    assert calls == ["cuda:0", "cuda:1"]


def test_a_failing_warm_up_raises_nothing_here(fresh, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("no CUDA driver")

    import threading

    escaped = []
    monkeypatch.setattr(threading, "excepthook", escaped.append)
    monkeypatch.setattr(torch, "ones", broken)
    t = devices.warm_up("cuda")
    t.join(10)
    assert not t.is_alive() and escaped == []  # caught: the first real use raises it where it belongs
