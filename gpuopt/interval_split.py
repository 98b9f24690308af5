"""Input splitting on interval bounds, for networks that are not piecewise linear.

A network with Sigmoid, Tanh, Softmax or LogSoftmax layers has no exact linear form, so the
piecewise linear bounds, activation splitting and the MILP do not apply
(:class:`~gpuopt.errors.NotPiecewiseLinearError`). Its interval bounds
(:func:`gpuopt.bounds.interval.interval_bounds`), and for a chain of affine layers and
ReLU/Sigmoid/Tanh the tighter linear relaxation of
:func:`gpuopt.bounds.smooth.smooth_disjunct_lower_bounds` (the larger of the two is kept), are
sound on every sub-box and shrink with it (every layer is continuous), so for few inputs the box
is covered by sub-boxes on a stack (depth first): a batch at a time is bounded, and on each sub-box every open
disjunct's margin ``max_i (A_k y - b_k)_i`` is lower-bounded over the output box (proof rows). A
sub-box with every open disjunct above 0 is closed. The centres of the sub-boxes left open are
evaluated in float64, and those at most a hair above the boundary are checked as
counterexamples (:func:`gpuopt.check.check_counterexample`, with the smooth layers' error
bounds), and each sub-box is halved along the dimension that is widest relative to the root
box. Halves share their float midpoint and cover the parent, so the property holds (``unsat``)
when the stack empties with every sub-box closed; a sub-box too thin to halve ends the search
``unknown``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .bounds.base import disjunct_lower_bounds
from .bounds.interval import interval_bounds
from .bounds.smooth import smooth_disjunct_lower_bounds
from .check import check_counterexample
from .problem import Problem

__all__ = ["IntervalSplitResult", "interval_split"]

#: open sub-box centres checked exactly per batch (those whose float64 margin is lowest, at most
#: a hair above 0)
CHECKS_PER_BATCH = 8


@dataclass(frozen=True)
class IntervalSplitResult:
    """``status`` ``sat``/``unsat``/``timeout``/``unknown``; ``boxes`` bounded; ``margin_lower``
    the least proven disjunct bound over the closed sub-boxes (``unsat``); ``closed_fraction`` of
    the input volume; ``open_lower`` the weakest bound of a sub-box left open; ``counterexample``
    an exactly checked point (``sat``)."""

    status: str
    boxes: int
    margin_lower: float
    closed_fraction: float
    open_lower: float
    counterexample: np.ndarray | None = None


def interval_split(problem: Problem, proof: Problem, disjuncts, *, deadline: float | None = None,
                   batch_size: int = 256, max_boxes: int = 1_000_000) -> IntervalSplitResult:
    """Decide the ``disjuncts`` (indices) of ``problem`` by input splitting on interval bounds;
    ``proof`` is the same problem with the proof rows (:func:`gpuopt.engine.stages.proof_problem`).
    See the module docstring."""
    net = problem.network
    A, b = proof.spec.padded()
    ks = torch.as_tensor(list(disjuncts), dtype=torch.long)
    A, b = A[ks], b[ks]  # a strict row is closed, as the others, by a bound above 0
    lo0 = torch.tensor(np.array(problem.region.lower, dtype=np.float64))
    hi0 = torch.tensor(np.array(problem.region.upper, dtype=np.float64))
    flat = ~(hi0 > lo0)  # fixed inputs: never split, and no share of the volume
    width0 = torch.where(flat, torch.ones_like(hi0), hi0 - lo0)
    open_lo, open_hi = lo0[None], hi0[None]  # the stack of open sub-boxes, its top last
    boxes = 0
    closed_volume, least, weakest = 0.0, math.inf, math.inf
    stuck = False
    while open_lo.shape[0]:
        if deadline is not None and time.monotonic() >= deadline:
            return IntervalSplitResult("timeout", boxes, -math.inf, closed_volume, weakest)
        if open_lo.shape[0] > max_boxes:
            return IntervalSplitResult("unknown", boxes, -math.inf, closed_volume, weakest)
        lo, hi = open_lo[-batch_size:], open_hi[-batch_size:]
        open_lo, open_hi = open_lo[:-batch_size], open_hi[:-batch_size]
        out_lo, out_hi = interval_bounds(net, lo, hi)
        boxes += lo.shape[0]
        lb = disjunct_lower_bounds(out_lo, out_hi, A, b)  # (batch, K)
        relaxed = smooth_disjunct_lower_bounds(net, lo, hi, A, b, deadline=deadline)
        if relaxed is not None:
            lb = torch.fmax(lb, relaxed)
        worst = lb.min(dim=1).values
        closed = worst > 0
        if closed.any():
            least = min(least, float(worst[closed].min()))
            share = torch.where(flat, torch.ones_like(width0), (hi[closed] - lo[closed]) / width0)
            closed_volume += float(torch.prod(share, dim=1).sum())
        lo, hi, worst = lo[~closed], hi[~closed], worst[~closed]
        if lo.shape[0]:
            weakest = float(worst.min())
            # the centres of the open sub-boxes: those whose float64 margin is at most a hair
            # above 0 are checked exactly (the lowest first, a few per batch)
            centres = ((lo + hi) / 2).numpy()
            y = net.forward64(centres)
            margin = problem.spec.margin64(y)
            near = np.flatnonzero(margin <= 1e-9 * (1 + np.abs(y).max(axis=1)))
            for j in near[np.argsort(margin[near])][:CHECKS_PER_BATCH].tolist():
                c = check_counterexample(problem, centres[j])
                if c.ok:
                    return IntervalSplitResult("sat", boxes, -math.inf, closed_volume, weakest, c.x)
            dim = torch.argmax((hi - lo) / width0, dim=1)
            rows = torch.arange(lo.shape[0])
            mid = (lo[rows, dim] + hi[rows, dim]) / 2
            splittable = (mid > lo[rows, dim]) & (mid < hi[rows, dim])
            stuck = stuck or not bool(splittable.all())
            lo, hi, dim, mid, rows = lo[splittable], hi[splittable], dim[splittable], mid[splittable], rows[:int(
                splittable.sum())]
            left_hi, right_lo = hi.clone(), lo.clone()
            left_hi[rows, dim] = mid
            right_lo[rows, dim] = mid
            open_lo = torch.cat([open_lo, right_lo, lo])
            open_hi = torch.cat([open_hi, hi, left_hi])
    if stuck:
        return IntervalSplitResult("unknown", boxes, -math.inf, closed_volume, weakest)
    return IntervalSplitResult("unsat", boxes, least, 1.0, math.inf)
