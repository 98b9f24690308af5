"""Task functions that run in pool workers: plain module-level functions of picklable data.

A worker is a fresh spawned process: it imports gpuopt (and torch) on its first task, sets torch
to one thread, and keeps networks it has loaded in a per-process cache, so the next item on the
same network does not read the ONNX file again. Each function returns a JSON-ready record.
"""

from __future__ import annotations

import time

__all__ = ["verify_instance_task", "verify_sample_task"]

_NETWORKS: dict = {}  # per worker process: ONNX path -> Network


def _setup():
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _network(onnx_path: str):
    from ..io.onnx import from_onnx

    if onnx_path not in _NETWORKS:
        _NETWORKS[onnx_path] = from_onnx(onnx_path)
    return _NETWORKS[onnx_path]


def _record(verdict, t0: float) -> dict:
    rec = verdict.to_dict()
    rec["seconds"] = time.monotonic() - t0
    return rec


def verify_instance_task(onnx_path: str, vnnlib_path: str, timeout: float, config) -> dict:
    """Decide one VNN-COMP instance; ``timeout`` counts from the start of the task, loading included."""
    t0 = time.monotonic()
    _setup()
    from ..io.vnnlib import load_vnnlib
    from ..problem import Problem
    from ..verify import verify_problems

    net = _network(onnx_path)
    props = load_vnnlib(vnnlib_path, n_inputs=net.input_size, n_outputs=net.output_size)
    problems = [Problem(net, p.box, p.spec, inner=p.inner) for p in props]
    verdict = verify_problems(problems, timeout=timeout, config=config, start_time=t0)
    return _record(verdict, t0)


def verify_sample_task(network, x, label: int, eps: float, clip: tuple, timeout: float, config) -> dict:
    """L-inf robustness of one sample: is every point within ``eps`` of ``x`` (and inside
    ``clip``) classified as ``label``? ``network`` is a Network, or an ONNX path."""
    t0 = time.monotonic()
    _setup()
    from ..regions import LinfBall
    from ..specs import robustness
    from ..verify import verify

    net = _network(network) if isinstance(network, str) else network
    region = LinfBall(x, eps, clip_lower=clip[0], clip_upper=clip[1])
    verdict = verify(net, region, robustness(int(label), net.output_size), timeout=timeout, config=config)
    return _record(verdict, t0)
