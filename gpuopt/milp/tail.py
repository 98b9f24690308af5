"""Tail MILPs: the network after a narrow hidden layer, over that layer's box.

Let ``l_j <= z_j <= u_j`` hold at hidden layer ``j`` for every point of the region (the sound
bounds the MILP is encoded with). Then ``h_j = relu(z_j)`` lies in the box
``H_j = [relu(l_j), relu(u_j)]`` (``[l_j, u_j]`` on pass-through coordinates), and with ``g_j`` the
network after layer ``j`` (blocks ``j+1, ...``, with the same later bounds)

    min_{x in region} max_i (A f(x) - b)_i  >=  min_{h in H_j} max_i (A g_j(h) - b)_i.

So the tail's MILP, which has only the binaries of the layers after ``j``, proves the disjunct
whenever its dual bound clears the threshold (with the same tolerance margin as the whole model,
:meth:`gpuopt.milp.highs.MilpResult.proves_above`). Where layer ``j`` has few live neurons the
network factors through them and the box loses little: on the refined bounds of six mnist_fc
256x4/256x6 instances, tails of 45 to 54 binaries (after a layer with at most 16 live neurons)
prove 50 of their 51 disjuncts in 0.05-0.2 s each, where the whole model took 0.8-9.3 s. The tail's
minimiser is a point of ``H_j``, not of the network: a tail only proves, it never yields a
counterexample, and a tail that does not prove says nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import highs  # HiGHS is called through its module: a stand-in set on it (tests) reaches the calls
from .encode import MilpModel, encode
from .highs import MilpResult, SolverConfig

__all__ = ["TAIL_MAX_LIVE", "TailProof", "live_mask", "prove_by_tail", "tail_box", "tail_layers"]

#: a tail starts after a hidden layer with at most this many live neurons (``u > 0``, pass-through
#: coordinates counted): the network factors through them
TAIL_MAX_LIVE = 16


@dataclass(frozen=True, eq=False)
class TailProof:
    """``layer``: the hidden layer ``j`` whose box the tail starts from (None: no tail proved);
    ``result``/``model``: that tail's HiGHS run and model (the proof; None without one);
    ``tried``: ``(layer, binaries, status, dual_bound, seconds)`` of every tail run, in order."""

    layer: int | None
    result: MilpResult | None
    model: MilpModel | None
    tried: tuple = ()


def _binaries(pre, blocks, first: int) -> int:
    """The unstable ReLUs of hidden layers ``first..``: a big-M model's binaries."""
    count = 0
    for k in range(first, len(pre)):
        l, u = (np.asarray(a, dtype=np.float64).reshape(-1) for a in pre[k])
        through = blocks[k].passthrough
        unstable = (l < 0) & (u > 0)
        if through is not None:
            unstable &= ~np.asarray(through, dtype=bool)
        count += int(unstable.sum())
    return count


def live_mask(block, u) -> np.ndarray:
    """The live neurons of a layer with upper bounds ``u``: ``u > 0``, and every pass-through
    coordinate of ``block`` (bool, one per neuron)."""
    live = np.asarray(u, dtype=np.float64).reshape(-1) > 0
    return live if block.passthrough is None else live | np.asarray(block.passthrough, dtype=bool)


def tail_layers(blocks, pre, *, max_live: int = TAIL_MAX_LIVE) -> list[int]:
    """The hidden layers a tail may start from, deepest first (the shortest tail first): those
    with at most ``max_live`` live neurons whose tail has fewer binaries than the whole model."""
    whole = _binaries(pre, blocks, 0)
    out = []
    for j in range(len(pre) - 1, -1, -1):
        if int(live_mask(blocks[j], pre[j][1]).sum()) <= max_live and _binaries(pre, blocks, j + 1) < whole:
            out.append(j)
    return out


def tail_box(block, l, u) -> tuple[np.ndarray, np.ndarray]:
    """``H_j``: the box of ``h_j`` from the bounds ``[l, u]`` of ``z_j`` (module docstring)."""
    l = np.asarray(l, dtype=np.float64).reshape(-1)
    u = np.asarray(u, dtype=np.float64).reshape(-1)
    if block.passthrough is None:
        return np.maximum(l, 0.0), np.maximum(u, 0.0)
    through = np.asarray(block.passthrough, dtype=bool)
    return np.where(through, l, np.maximum(l, 0.0)), np.where(through, u, np.maximum(u, 0.0))


def prove_by_tail(blocks, pre, out_bounds, A, b, *, threshold: float, deadline: float,
                  formulation: str = "bigm", config: SolverConfig = SolverConfig(),
                  max_live: int = TAIL_MAX_LIVE) -> TailProof:
    """Try the tails of :func:`tail_layers`, shortest first, until one proves
    ``min max_i (A f(x) - b)_i > threshold`` or ``deadline`` (``time.monotonic()``) passes. Each
    tail gets the time left; ``pre``/``out_bounds`` are the bounds the whole model would use
    (``len(blocks) - 1`` hidden layers)."""
    tried = []
    for j in tail_layers(blocks, pre, max_live=max_live):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        lo, hi = tail_box(blocks[j], *pre[j])
        model = encode(blocks[j + 1:], pre[j + 1:], out_bounds, lo, hi, A, b, formulation=formulation)
        left = deadline - time.monotonic()
        if left <= 0:
            break
        res = highs.solve_milp(model, time_limit=min(left, 1e7), threshold=threshold, config=config,
                               deadline=deadline)
        tried.append((j, model.n_binaries, res.status.value, float(res.dual_bound), float(res.seconds)))
        if res.proves_above(threshold):
            return TailProof(layer=j, result=res, model=model, tried=tuple(tried))
    return TailProof(layer=None, result=None, model=None, tried=tuple(tried))
