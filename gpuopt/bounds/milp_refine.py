"""MILP refinement of the intermediate bounds: stabilise unstable neurons with exact per-neuron MILPs.

Where the LP of the triangle relaxation adds nothing to alpha-CROWN's intermediate bounds (on the
deeper mnist_fc nets OBBT moved none of them), the MILP over the layers before a neuron often
shows it stable: the binaries of the earlier layers are exact. As alpha-beta-CROWN's
``bab-refine`` does, layer ``k >= 1`` is refined after layers ``< k``: for an unstable ``z_k,j``
(``l < 0 < u``) the big-M MILP of :mod:`gpuopt.milp.encode` over blocks ``0..k`` (binaries for the
unstable neurons of layers ``< k``, with their refined bounds) is solved in HiGHS for

* **inactive**: ``min -z_j > f`` proves ``z_j < 0`` everywhere (``u := 0``);
* **active**: ``min z_j > f`` proves ``z_j > 0`` (``l := 0``),

trying first the side nearer its bound (``u <= -l``: inactive). ``f`` is
:func:`~gpuopt.milp.highs.unchecked_floor` at the neuron's scale (``max(1, -l, u)``), and the
MILP's stop test adds HiGHS's dual-tolerance margin (:meth:`~gpuopt.milp.highs.MilpResult.proves_above`).
A search that finds a point on the other side (``z_j`` beyond ``-f`` the wrong way) stops at once;
one that runs out of its ``neuron_time`` keeps HiGHS's dual bound ``D`` as a tighter bound,
``u := min(u, -D + margin + f)`` (or ``l := max(l, D - margin - f)``), when finite and without a
numerical warning, and unless the point HiGHS returned contradicts it (its ``z_j`` evaluated in
float64 lies beyond the bound: then HiGHS is wrong, and neither is used).

**What it rests on.** Unlike the LP bounds of :mod:`gpuopt.bounds.lp` (safe dual bounds, exact),
these bounds rest on HiGHS's branch-and-bound within its tolerances, covered by the margin and the
floor as for a MILP proof without the independent re-check (:mod:`gpuopt.milp.recheck`). A
verdict that uses them says so. Every intermediate state is a valid set of bounds, so stopping at
the deadline is safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from ..milp.encode import encode
from ..milp.highs import MilpStatus, SolverConfig, solve_milp, unchecked_floor
from ..milp.walk import forward_pattern
from .lp import unstable_indices

__all__ = ["MilpRefinement", "milp_refine"]


@dataclass(frozen=True)
class MilpRefinement:
    """The result of :func:`milp_refine`: ``pre`` (one ``(lower, upper)`` numpy pair per hidden
    layer, never looser than the input), the MILPs solved, the neurons made stable, those whose
    bounds only tightened, the unstable count per layer before and after, and the time taken."""

    pre: list
    milps: int
    stabilised: int
    tightened: int
    unstable_before: tuple
    unstable_after: tuple
    seconds: float


def _unstable(pre) -> tuple:
    return tuple(int(((l < 0) & (u > 0)).sum()) for l, u in pre)


def _order(l: np.ndarray, u: np.ndarray, passthrough) -> np.ndarray:
    """Unstable neurons, the nearest to stable first (``min(-l, u) / (u - l)`` ascending)."""
    idx = unstable_indices(l, u, passthrough)
    near = np.minimum(-l[idx], u[idx]) / (u[idx] - l[idx])
    return idx[np.argsort(near, kind="stable")]


def milp_refine(blocks, pre, x_lower, x_upper, *, deadline: float | None = None, neuron_time: float = 1.0,
                config: SolverConfig = SolverConfig(), first_layer: int = 1) -> MilpRefinement:
    """Refine the bounds ``pre`` of the unstable neurons of layers ``first_layer..`` over the box
    ``[x_lower, x_upper]`` (see the module docstring), each MILP for at most ``neuron_time``
    seconds, until ``deadline`` (``time.monotonic()``)."""
    t0 = time.monotonic()
    pre = [(np.array(l, dtype=np.float64).reshape(-1), np.array(u, dtype=np.float64).reshape(-1)) for l, u in pre]
    before = _unstable(pre)
    milps = stabilised = tightened = 0

    def left() -> float:
        return np.inf if deadline is None else deadline - time.monotonic()

    for k in range(max(1, first_layer), len(pre)):
        if left() <= 0:
            break
        l, u = pre[k]
        order = _order(l, u, blocks[k].passthrough)
        if not order.size:
            continue
        model = encode(blocks[:k + 1], pre[:k], (l, u), x_lower, x_upper, np.eye(1, l.size), [0.0])
        y = model.y_index
        for j in order:
            scale = max(1.0, float(-l[j]), float(u[j]))
            floor = unchecked_floor(scale, config)
            sides = (-1.0, 1.0) if u[j] <= -l[j] else (1.0, -1.0)
            for sign in sides:  # -1: min -z_j (inactive); +1: min z_j (active)
                if left() <= 0 or not (l[j] < 0 < u[j]):
                    break
                c = np.zeros(model.n_vars)
                c[y[j]] = sign
                cols = np.flatnonzero(c)

                def other_side(x, cols=cols, sign=sign, floor=floor):
                    return float(sign * x[cols].sum()) < -floor  # a point with z_j on the other side

                res = solve_milp(replace(model, c=c, offset=0.0), time_limit=min(neuron_time, max(left(), 0.0)),
                                 threshold=floor, accept_solution=other_side, config=config, deadline=deadline)
                milps += 1
                if res.proves_above(floor):
                    if sign < 0:
                        u[j] = min(u[j], 0.0)
                    else:
                        l[j] = max(l[j], 0.0)
                    stabilised += 1
                    break
                if res.warnings or not np.isfinite(res.dual_bound) or \
                        res.status in (MilpStatus.ERROR, MilpStatus.INFEASIBLE):
                    continue
                bound = res.dual_bound - res.proof_margin - floor  # min sign*z_j >= bound
                if res.solution is not None:  # z_j at HiGHS's point, clipped to the box (a check, not a proof)
                    z_k, _ = forward_pattern(blocks[:k + 1], np.clip(res.solution[model.x_index], x_lower, x_upper))
                    if sign * z_k[j] < bound:
                        continue  # HiGHS's own point contradicts its bound: trust neither
                if sign < 0 and -bound < u[j]:
                    u[j] = max(-bound, l[j])
                elif sign > 0 and bound > l[j]:
                    l[j] = min(bound, u[j])
                else:
                    continue
                if u[j] <= 0 or l[j] >= 0:
                    stabilised += 1
                    break
                tightened += 1
    return MilpRefinement(pre=pre, milps=milps, stabilised=stabilised, tightened=tightened, unstable_before=before,
                          unstable_after=_unstable(pre), seconds=time.monotonic() - t0)
