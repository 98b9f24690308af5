"""One disjunct's MILP, then, if it has not decided, the same MILP on bounds conditioned on the disjunct.

The flow that the pipeline's MILP task (:func:`gpuopt.engine.tasks.milp_task`) and the
formulation benchmark (``benchmarks/formulations.py``) share:

1. encode ``min_{x in region} max_i (A f(x) - b)_i`` with a formulation (and cut families), and
   run HiGHS on it alone for the first ``first_share`` of the time (at least ``first_seconds``);
2. if that run neither proved ``min > threshold`` nor had a point accepted, tighten the last
   hidden layer's and the outputs' bounds by LP over ``S = {x : A f(x) <= b + tau}``
   (:func:`gpuopt.bounds.lp.lp_tighten_conditioned`) in at most ``condition_share`` of the time
   left, and run HiGHS again, to the deadline, on a model encoded with those bounds.

**What a result proves.** Every point outside ``S`` has a margin above ``tau``. So a dual bound
``lb`` of the conditioned model proves ``min >= min(lb, tau)`` over the whole region
(:attr:`ConditionedRun.ceiling` is ``tau`` then, ``inf`` otherwise), and a checked Farkas
certificate of an empty ``S`` (:attr:`ConditionedRun.empty`) proves ``min > tau`` outright. With
``tau`` at least the threshold the caller proves against, either settles the sign. Points found on
the conditioned model are points of the network (its bounds only cut the relaxation), and the
caller re-checks every one in float64 anyway.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from . import highs  # HiGHS is called through its module: a stand-in set on it (tests) reaches the calls
from .encode import MilpModel, complete_assignment, encode
from .highs import MilpResult, SolverConfig

__all__ = ["ConditionedRun", "solve_conditioned"]


@dataclass(frozen=True, eq=False)
class ConditionedRun:
    """``result``: the last HiGHS run (its ``nodes`` summed over both runs), or None when no time
    was left for a first one; ``model``: the model that run solved; ``first``/``first_model``: the
    first run and its model (the same as the last when there was no conditioning); ``start``: the
    first model's start vector (or None); ``conditioning``: the
    :class:`~gpuopt.bounds.lp.ConditionedTightening` (None: not run); ``empty``: ``S`` is empty by
    a Farkas certificate; ``ceiling``: the largest margin a proof may claim (``tau`` once
    conditioned); ``cuts``: what :func:`gpuopt.milp.cuts.strengthen` added to the first model;
    ``build_seconds``: the first model's encoding and cuts."""

    result: MilpResult | None
    model: MilpModel
    first: MilpResult | None
    first_model: MilpModel
    start: np.ndarray | None = None
    conditioning: object = None
    empty: bool = False
    ceiling: float = math.inf
    cuts: dict | None = None
    build_seconds: float = 0.0
    tail: int | None = None
    tails: tuple = ()


def solve_conditioned(blocks, pre, out_bounds, x_lower, x_upper, A, b, *, threshold: float, tau: float,
                      deadline: float, condition_share: float, formulation: str = "bigm", cuts: str = "",
                      cut_share: float = 0.1, start_x: np.ndarray | None = None,
                      accept: Callable[[np.ndarray], bool] | None = None, constraints=None,
                      config: SolverConfig = SolverConfig(), first_share: float = 0.1,
                      first_seconds: float = 5.0, tail_share: float = 0.0) -> ConditionedRun:
    """The MILP of one disjunct ``{y : A y <= b}`` over the region (box ``[x_lower, x_upper]``,
    optional ``constraints``), stopping once ``min > threshold`` is proven or ``accept`` (a
    callback on an incumbent's input point, e.g. the float64 re-check) takes a point, conditioned
    on ``S`` at ``tau`` when the first run leaves it open (module docstring). ``condition_share
    <= 0`` or an infinite ``tau``: one run to ``deadline`` (a ``time.monotonic()`` value), no
    conditioning. ``cuts``: cut families (:func:`gpuopt.milp.cuts.cut_kinds`), their root rounds
    in at most ``cut_share`` of the time left. ``start_x``: an input point completed into a MIP
    start of the first model. ``tail_share`` > 0: first, tail MILPs after narrow layers
    (:func:`gpuopt.milp.tail.prove_by_tail`) in at most that share of the time; one that proves
    ends the run (``tail``)."""
    from ..bounds.lp import lp_tighten_conditioned
    from .tail import prove_by_tail

    t0 = time.monotonic()
    tails = ()
    if tail_share > 0:
        proof = prove_by_tail(blocks, pre, out_bounds, A, b, threshold=threshold,
                              deadline=t0 + tail_share * (deadline - t0), formulation=formulation, config=config)
        if proof.layer is not None:
            return ConditionedRun(result=proof.result, model=proof.model, first=proof.result,
                                  first_model=proof.model, tail=proof.layer, tails=proof.tried)
        tails = proof.tried

    def build(pre_, out_):
        model = encode(blocks, pre_, out_, x_lower, x_upper, A, b, formulation=formulation, constraints=constraints)
        info = None
        if cuts:
            from .cuts import strengthen

            stop = time.monotonic() + cut_share * (deadline - time.monotonic())
            model, info = strengthen(model, blocks, cuts, deadline=stop, config=config)
        return model, info

    if highs.cancelled():  # a cancelled run (gpuopt.engine.beside) encodes nothing more
        return ConditionedRun(result=None, model=None, first=None, first_model=None, tails=tails)
    t_build = time.monotonic()
    model, cut_info = build(pre, out_bounds)
    build_seconds = time.monotonic() - t_build
    start = complete_assignment(model, blocks, start_x) if start_x is not None else None
    accepted = []

    def on_point(m: MilpModel):
        """HiGHS's callback on model ``m``'s solution vectors: ``accept`` on the input point."""
        if accept is None:
            return None

        def take(v):
            ok = bool(accept(np.asarray(v)[m.x_index]))
            if ok:
                accepted.append(True)
            return ok
        return take

    conditioning = condition_share > 0 and math.isfinite(tau)
    left = deadline - time.monotonic()
    first = left if not conditioning else min(left, max(first_seconds, first_share * left))
    res = None
    if first > 0:
        res = highs.solve_milp(model, time_limit=min(first, 1e7), threshold=threshold, start=start,
                               accept_solution=on_point(model), config=config,
                               deadline=min(deadline, time.monotonic() + first))
    run = ConditionedRun(result=res, model=model, first=res, first_model=model, start=start, cuts=cut_info,
                         build_seconds=build_seconds, tails=tails)
    if accepted or (res is not None and res.proves_above(threshold)) or not conditioning \
            or time.monotonic() >= deadline:
        return run
    cond = lp_tighten_conditioned(blocks, pre, out_bounds, x_lower, x_upper, A, b, tau, constraints=constraints,
                                  deadline=time.monotonic() + condition_share * (deadline - time.monotonic()),
                                  config=config)
    run = replace(run, conditioning=cond, ceiling=float(tau))
    if cond.empty:  # no point has a margin of at most tau: proven on a Farkas certificate
        return replace(run, empty=True)
    model, _ = build(cond.pre, cond.out)
    # the best point's margin may exceed tau: outside the conditioned model, so no start
    second = highs.solve_milp(model, time_limit=min(max(deadline - time.monotonic(), 0.01), 1e7),
                              threshold=threshold, accept_solution=on_point(model), config=config, deadline=deadline)
    nodes = 0 if res is None else res.nodes
    return replace(run, result=replace(second, nodes=second.nodes + nodes), model=model)
