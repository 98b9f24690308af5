"""LP branch and bound inside one split domain, warm-started in one HiGHS instance.

Activation splitting can stall on a plateau: on mnist-net_256x4 prop_4_0.05, from depth 29 on,
tens of thousands of domains kept the bound -0.0823 of one ancestor, which is also the LP optimum
of each of them (the beta-CROWN optimum is the LP of the same relaxation). The neurons the
branching rule splits there are ones the LP's minimiser already satisfies, so both children keep
its value, level after level; the MILP on the whole disjunct stalls at the same dual bound.

Here the domain's LP relaxation (big-M relaxed: the triangle of each unstable neuron) is built
once, and a split of neuron ``j`` is its binary fixed by its column bounds (``d_j = 1``: ``h = z
>= 0``; ``d_j = 0``: ``h = 0 >= z``), so each node is a bound change away from the last and HiGHS's
dual simplex resumes from the previous basis (about 20 ms a node against 120 ms for a fresh LP).
A node is split at the neuron whose triangle the LP's minimiser uses most, ``h_j - max(z_j, 0)``
largest among the unfixed ones: both children cut the minimiser off. Depth first: with a fixed
branching rule the tree to close is the same in any order, and the next node is then mostly a
child of the last (the basis nearly fits, and few nodes are held).

**Soundness.** A node is closed only by the safe dual bound of :mod:`gpuopt.milp.safe` over the
node's own column bounds (above 0), or as empty by a Farkas certificate (HiGHS's dual ray making
the safe bound of ``min 0`` positive): neither rests on HiGHS's tolerances. The two children of a
node cover it: every network point has ``d_j = 1`` (``z_j >= 0``) or ``d_j = 0`` (``z_j <= 0``).

On that instance the plateau's tree proved larger than the time (README, "Plateaus"), so
activation splitting dives only with ``ReluSplitConfig.lp_rescue`` (off by default).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from .bounds.lp import LpSession
from .milp.encode import MilpModel

__all__ = ["DiveResult", "lp_dive"]


@dataclass
class DiveResult:
    """``closed``: every node closed (empty or proven); ``proven``: the lowest safe bound of the
    proven nodes (``inf`` if none); ``open``: the nodes left, as ``(safe bound, ((layer, neuron,
    active), ...))``, the splits added to the domain; ``points``: LP minimisers of nodes whose
    minimiser uses no triangle (network points, up to HiGHS's tolerances: to be checked as
    counterexamples); ``lps``: the LPs solved."""

    closed: bool
    proven: float = np.inf
    open: list = field(default_factory=list)
    points: list = field(default_factory=list)
    lps: int = 0


class _Dive:
    """One HiGHS instance holding ``model``'s LP, and per unstable neuron its binary's column
    (``d``), its pre- and post-activation columns (``z``, ``h``) and ``(layer, neuron)``."""

    def __init__(self, model: MilpModel):
        self.model = model
        self.session = LpSession(model, presolve=False, simplex_scaling=False)
        layers = [(j, z[u], h[u], u, d) for j, (z, h, u, d) in enumerate(model.layers) if u.size]
        self.d = np.concatenate([d for *_, d in layers]).astype(np.int32) if layers else np.zeros(0, np.int32)
        self.z = np.concatenate([z for _, z, *_ in layers]) if layers else np.zeros(0, int)
        self.h = np.concatenate([h for _, _, h, *_ in layers]) if layers else np.zeros(0, int)
        self.neuron = [(j, int(n)) for j, _, _, u, _ in layers for n in u]
        self.cost_cols = np.flatnonzero(model.c)
        self.c = np.zeros(model.n_vars)
        self.c[self.cost_cols] = model.c[self.cost_cols]

    def solve(self, fix: dict, until: float):
        """The node whose binaries ``fix`` (position in ``self.d`` -> 0 or 1) are fixed: ``("empty",
        None, None)``, ``("closed", bound, None)`` or ``("open", bound, branch)`` with ``branch`` the
        position to split (``None``: the minimiser uses no triangle). HiGHS stops at ``until``; a
        certificate or dual priced over this node's bounds is sound whichever LP it came from."""
        s, m = self.session, self.model
        lo, hi = np.zeros(self.d.size), np.ones(self.d.size)
        for i, v in fix.items():
            lo[i] = hi[i] = v
        scale = s.sc.col_scale[self.d]
        s.h.changeColsBounds(self.d.size, self.d, lo / scale, hi / scale)
        col_lo, col_hi = m.col_lower.copy(), m.col_upper.copy()
        col_lo[self.d], col_hi[self.d] = lo, hi
        s.minimize(self.cost_cols, m.c[self.cost_cols], float(m.offset), deadline=max(until, time.monotonic() + 0.05))
        if s.refused:
            return "open", -np.inf, None
        if s.infeasible(col_lo, col_hi):
            return "empty", None, None
        sol = s.h.getSolution()
        if not sol.dual_valid:
            return "open", -np.inf, None
        y = np.asarray(sol.row_dual, dtype=np.float64) / s.sc.row_scale
        bound = s.bounder.bound(self.c, y, float(m.offset), col_lo, col_hi)
        if bound > 0:
            return "closed", bound, None
        if not sol.value_valid or not self.d.size:
            return "open", bound, None
        v = np.asarray(sol.col_value, dtype=np.float64) * s.sc.col_scale
        gap = v[self.h] - np.maximum(v[self.z], 0.0)
        if fix:
            gap[list(fix)] = -np.inf
        i = int(np.argmax(gap))
        return "open", bound, (i if gap[i] > 0 else None)

    def point(self) -> np.ndarray:
        s = self.session
        x = self.model.x_index
        return np.asarray(s.h.getSolution().col_value, dtype=np.float64)[x] * s.sc.col_scale[x]


def lp_dive(model: MilpModel, until: float) -> DiveResult:
    """Depth-first LP branch and bound of ``min c^T v + offset`` over the LP relaxation ``model``
    (:func:`gpuopt.relu_split._leaf_model`) until the wall-clock time ``until``
    (:func:`time.monotonic`); see the module docstring."""
    dive = _Dive(model)
    out = DiveResult(closed=False)
    stack = []

    def visit(fix: dict, inherited: float):
        kind, bound, branch = dive.solve(fix, until)
        out.lps += 1
        if kind == "empty":
            return
        if kind == "closed":
            out.proven = min(out.proven, bound)
            return
        if branch is None:
            if bound > -np.inf:
                out.points.append(dive.point())
            out.open.append((max(bound, inherited), fix))
            return
        stack.append((max(bound, inherited), fix, branch))

    visit({}, -np.inf)
    while stack and time.monotonic() < until:
        bound, fix, branch = stack.pop()
        for side in (1, 0):
            visit({**fix, branch: side}, bound)
    out.open += [(b, fix) for b, fix, _ in stack]
    out.closed = not out.open
    out.open = [(b, tuple((*dive.neuron[i], bool(v)) for i, v in sorted(fix.items()))) for b, fix in out.open]
    return out
