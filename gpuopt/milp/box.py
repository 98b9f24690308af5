"""An exact MILP on one sub-box of an input split: the hybrid's leaf solver.

Input splitting closes a sub-box when CROWN's linear bound of a disjunct is positive there. Where
the property holds by a small margin over a wide region, CROWN's ReLU relaxation stays looser
than that margin until the boxes are tiny, and the search digs without end. A sub-box with few
unstable ReLUs is instead cheap to decide exactly: the big-M MILP over the box, with the box's
own pre-activation bounds, has a binary only per unstable ReLU (stable ones are linear rows).

:func:`prove_box` solves, for each still-open disjunct ``{y : A_k y <= b_k}``,
``min_{x in box} max_i (A_k f(x) - b_k)_i`` and closes the disjunct on the box only when the
result proves it ``> threshold`` (``threshold_abs + threshold_rel * scale``, ``scale`` the
objective's magnitude over the box's output bounds) past HiGHS's tolerance margin
(:meth:`~gpuopt.milp.highs.MilpResult.proves_above`), and, with ``recheck``, only when the
independent safe-bound branch and bound (:func:`~gpuopt.milp.recheck.recheck_milp`) proves it
too. An incumbent is a counterexample only after the exact check. Anything else leaves the box
open, to be split further.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..check import check_counterexample
from ..errors import InvalidInputError
from .encode import encode
from .highs import SolverConfig, solve_milp

__all__ = ["BoxProof", "BoxOutcome", "prove_box"]


@dataclass(frozen=True)
class BoxProof:
    """How a sub-box's MILP proves: ``threshold_abs``/``threshold_rel``, ``solver`` and
    ``recheck`` as in :class:`~gpuopt.verify.VerifyConfig`."""

    threshold_abs: float = 1e-6
    threshold_rel: float = 1e-5
    solver: SolverConfig = field(default_factory=SolverConfig)
    recheck: bool = True

    def __post_init__(self):
        if not (self.threshold_abs > 0 and self.threshold_rel >= 0):
            raise InvalidInputError("`threshold_abs` must be > 0 and `threshold_rel` >= 0")
        if not isinstance(self.solver, SolverConfig):
            raise InvalidInputError(f"`solver` must be a SolverConfig, got {type(self.solver).__name__}")


@dataclass(frozen=True, eq=False)
class BoxOutcome:
    """``closed``: per given disjunct, whether the MILP proved it unreachable on the box;
    ``lower``: the smallest proven bound (``inf`` when none); ``counterexample``: an exactly
    checked float64 input, or ``None``; ``seconds`` spent."""

    closed: list
    lower: float
    counterexample: np.ndarray | None
    seconds: float


def prove_box(problem, blocks, lo, hi, pre, out_bounds, disjuncts, settings: BoxProof, time_limit: float,
              deadline: float | None = None) -> BoxOutcome:
    """Decide the ``disjuncts`` (indices into ``problem.spec.disjuncts``) of ``problem`` on the
    box ``[lo, hi]`` by MILP (module docstring), at most ``time_limit`` seconds per disjunct.
    ``pre``: per hidden layer ``(l, u)`` numpy pre-activation bounds that hold on the box;
    ``out_bounds``: ``(l_y, u_y)``. Stops at the first disjunct it cannot close (the box stays
    open)."""
    t0 = time.monotonic()
    closed = [False] * len(disjuncts)
    lower = math.inf
    finite = all(np.all(np.isfinite(l)) and np.all(np.isfinite(u)) for l, u in pre)
    if not finite or not (np.all(np.isfinite(out_bounds[0])) and np.all(np.isfinite(out_bounds[1]))):
        return BoxOutcome(closed, lower, None, 0.0)  # no big-M constants
    ly, uy = out_bounds
    for j, k in enumerate(disjuncts):
        left = time_limit if deadline is None else min(time_limit, deadline - time.monotonic())
        if left <= 0:
            break
        Ak, bk = problem.spec.disjuncts[k]
        scale = max(1.0, float(np.abs(bk).max()), float((np.abs(Ak) @ np.maximum(np.abs(ly), np.abs(uy))).max()))
        threshold = settings.threshold_abs + settings.threshold_rel * scale
        model = encode(blocks, pre, out_bounds, lo, hi, Ak, bk)
        found = {}

        def accept(v):
            c = check_counterexample(problem, v[model.x_index])
            if c.ok:
                found["x"] = c.x
            return c.ok

        res = solve_milp(model, time_limit=left, threshold=threshold, accept_solution=accept,
                         config=settings.solver, deadline=deadline)
        if not found and res.solution is not None:
            accept(res.solution)
        if found:
            return BoxOutcome(closed, lower, found["x"], time.monotonic() - t0)
        if not res.proves_above(threshold):
            break
        if settings.recheck:
            from .recheck import recheck_milp

            stop = time.monotonic() + max(0.5, res.seconds)
            if deadline is not None:
                stop = min(stop, deadline)
            if not recheck_milp(model, threshold, deadline=stop, config=settings.solver).proven:
                break
        closed[j] = True
        lower = min(lower, res.dual_bound - res.proof_margin)
    return BoxOutcome(closed, lower, None, time.monotonic() - t0)
