"""LP bounds: bound tightening (OBBT) of the unstable neurons, and LP bounds of spec rows.

The LP is the big-M MILP of :mod:`gpuopt.milp.encode` with its binaries relaxed to ``[0, 1]``,
which for a neuron with bounds ``l < 0 < u`` is the triangle ``h >= 0, h >= z, h <= u (z - l) / (u - l)``
over the whole network at once (tighter than CROWN, which relaxes each neuron with one lower line).
:func:`lp_tighten` goes layer by layer: the LP of the network up to layer ``k`` (with the bounds
of layers ``< k`` already tightened) is minimised and maximised over each unstable ``z_k,j``, and
the neuron keeps the tighter of its old and new bounds. A neuron whose new upper bound is
``<= 0`` (or lower ``>= 0``) is stable, and the next layer's LP has one binary fewer.

**Soundness.** Every bound is the safe dual bound of :mod:`gpuopt.milp.safe`, computed from the
row duals HiGHS returns, so it holds whatever HiGHS's tolerances, scaling, dropped coefficients or
early stop: a wrong dual only weakens it. One HiGHS instance per layer keeps its basis from one
objective to the next (warm starts); LPs stop at the deadline, and what was tightened so far is
returned (every intermediate state is sound).

**Conditioned on a disjunct** (:func:`lp_tighten_conditioned`). To prove a disjunct
``{y : A y <= b}`` unreachable it suffices to prove ``max_i (A f(x) - b)_i > tau`` (for a
``tau >= 0``) on ``S = {x : A f(x) <= b + tau}``: every ``x`` outside ``S`` clears ``tau``
already. So the LPs may carry the rows ``A y <= b + tau`` too, and the bounds they give hold on
``S`` only: much tighter near the output when the disjunct is barely unreachable (OBBT with the
objective cutoff, as MILP solvers do it). A MILP built on them proves the disjunct when its minimum
clears ``tau`` or less; an LP that is infeasible with these rows, by a checked Farkas certificate,
proves it at once (``S`` is empty). These bounds are the disjunct's own: no other disjunct and no
counterexample search may use them as bounds on the box.

Like CROWN and the MILP, the LP bounds the float64 affine blocks
(:meth:`~gpuopt.network.Network.affine_blocks`); the deviation from the source model is added
where proofs are made (:func:`gpuopt.check.parameter_deviation`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..errors import InvalidInputError, SolverError
from ..milp.cuts import add_rows
from ..milp.encode import InputConstraints, MilpModel, encode
from ..milp.highs import SolverConfig, _highspy, _pass_model, _scale
from ..milp.safe import SafeBounder

__all__ = ["LpSession", "LpTightening", "ConditionedTightening", "lp_tighten", "lp_tighten_conditioned",
           "lp_row_bounds"]


class LpSession:
    """One HiGHS instance holding the LP relaxation of ``model``; :meth:`minimize` solves one
    objective after another from the previous basis and returns safe lower bounds.

    HiGHS gets the model rescaled by powers of two (:func:`gpuopt.milp.highs._scale`: HiGHS
    refuses coefficients of 1e15 and more, which big-M rows reach with huge neuron bounds); its
    row duals are mapped back to the caller's rows (``y = y' / row_scale``) and priced on the
    original model, so the scaling (and any entry it drops) never enters a bound. A model HiGHS
    refuses even so gives no bounds (``-inf``), never an error."""

    #: seconds one LP may take (a stuck LP gives no bound rather than holding up the rest)
    lp_time_limit = 10.0

    def __init__(self, model: MilpModel, *, config: SolverConfig = SolverConfig(), presolve: bool = True,
                 simplex_scaling: bool = True):
        self.highspy = hs = _highspy()
        self.model = model
        h = self.h = hs.Highs()
        h.silent()
        # presolve speeds the first (cold) LP up 10-25x on whole networks (``config.presolve``,
        # the MILP's, does not apply here), and HiGHS keeps the basis for the next ones (dual
        # simplex: primal simplex took over 10 s on some cold mnist LPs that dual simplex solves
        # in 0.2 s). The LP of one split domain is faster without presolve and without HiGHS's
        # own scaling (the columns are already scaled by powers of two): 0.11-0.17 s against
        # 0.2-3 s on mnist-net_256x4, and an infeasible one then comes with the dual ray that
        # :meth:`infeasible` checks
        for name, value in (("threads", int(config.threads)), ("random_seed", int(config.seed)),
                            ("presolve", "on" if presolve else "off"), ("output_flag", False)):
            h.setOptionValue(name, value)
        if not simplex_scaling:
            h.setOptionValue("simplex_scale_strategy", 0)
        n = model.n_vars
        self.sc = sc = _scale(model)
        try:
            _pass_model(h, hs, np.zeros(n), sc.col_lower, sc.col_upper, sc.row_lower, sc.row_upper, sc.A)
            self.refused = False
        except SolverError:
            self.refused = True
        self.bounder = SafeBounder(model.A, model.row_lower, model.row_upper, model.col_lower, model.col_upper)
        self._cost_cols = np.zeros(0, dtype=np.int32)
        self.lps = 0

    def minimize(self, cols, vals, offset: float = 0.0, *, deadline: float | None = None) -> float:
        """A safe lower bound of ``min sum_i vals_i v[cols_i] + offset`` (``-inf`` when HiGHS gave
        no dual solution, e.g. out of time)."""
        h = self.h
        if self.refused:
            return -np.inf
        cols = np.asarray(cols, dtype=np.int32).reshape(-1)
        vals = np.asarray(vals, dtype=np.float64).reshape(-1)
        if self._cost_cols.size:
            h.changeColsCost(self._cost_cols.size, self._cost_cols, np.zeros(self._cost_cols.size))
        h.changeColsCost(cols.size, cols, vals * self.sc.col_scale[cols])  # costs of the scaled columns
        self._cost_cols = cols
        limit = self.lp_time_limit
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                return -np.inf
            limit = min(limit, left)
        # HiGHS's time_limit counts the instance's total run time, across calls
        h.setOptionValue("time_limit", h.getRunTime() + max(limit, 0.01))
        h.run()
        self.lps += 1
        sol = h.getSolution()
        if not sol.dual_valid:
            return -np.inf
        c = np.zeros(self.model.n_vars)
        np.add.at(c, cols, vals)
        y = np.asarray(sol.row_dual, dtype=np.float64) / self.sc.row_scale
        return self.bounder.bound(c, y, offset)

    def infeasible(self, col_lower=None, col_upper=None) -> bool:
        """Whether the last LP is proven infeasible by a Farkas certificate: HiGHS's dual ray
        ``y`` (either sign) makes the safe lower bound of ``min 0`` positive (over the column
        bounds given, else the model's), which no feasible point allows (``0 >= bound > 0``).
        HiGHS's own verdict alone proves nothing."""
        if self.refused or self.h.getModelStatus() != self.highspy.HighsModelStatus.kInfeasible:
            return False
        _, has_ray, ray = self.h.getDualRay()
        if not has_ray:
            return False
        y = np.asarray(ray, dtype=np.float64) / self.sc.row_scale
        zero = np.zeros(self.model.n_vars)
        return any(self.bounder.bound(zero, sign * y, 0.0, col_lower, col_upper) > 0 for sign in (1.0, -1.0))


@dataclass(frozen=True)
class LpTightening:
    """The result of :func:`lp_tighten`: ``pre`` (one ``(lower, upper)`` numpy pair per hidden
    layer, never looser than the input), the LPs solved, the bounds that moved (a neuron's lower
    and upper count apart), the neurons that became stable, the layers finished, and the time taken."""

    pre: list
    lps: int
    tightened: int
    stabilised: int
    layers_done: int
    seconds: float


def unstable_indices(l: np.ndarray, u: np.ndarray, passthrough) -> np.ndarray:
    """The ReLU neurons with ``l < 0 < u`` (passthrough coordinates have no ReLU)."""
    mask = (l < 0) & (u > 0)
    if passthrough is not None:
        mask &= ~np.asarray(passthrough, dtype=bool)
    return np.flatnonzero(mask)


def _unstable_order(l: np.ndarray, u: np.ndarray, passthrough) -> np.ndarray:
    """Unstable neurons, the largest triangle (``-l u / (u - l)``, its height at 0) first."""
    idx = unstable_indices(l, u, passthrough)
    area = -l[idx] * u[idx] / (u[idx] - l[idx])
    return idx[np.argsort(-area, kind="stable")]


def _tighten_columns(session: LpSession, cols, order, l: np.ndarray, u: np.ndarray, *, deadline, relu: bool,
                     farkas: bool = False) -> tuple[bool, int, int, bool]:
    """Maximise, then minimise, each column ``cols[j]`` (``j`` in ``order``) over ``session``'s LP
    and narrow ``l[j], u[j]`` in place to the safe bounds (never crossing). ``relu``: a neuron whose
    upper bound falls to ``<= 0`` is stable and skips its minimum. ``farkas``: an LP without a dual
    solution is checked for a certificate of infeasibility (:meth:`LpSession.infeasible`), which
    ends the pass. Returns ``(finished, tightened, stabilised, infeasible)``."""
    tightened = stabilised = 0
    for j in order:
        if deadline is not None and time.monotonic() >= deadline:
            return False, tightened, stabilised, False
        upper = -session.minimize([cols[j]], [-1.0], deadline=deadline)  # max v = -min(-v)
        if farkas and upper == np.inf and session.infeasible():
            return True, tightened, stabilised, True
        if upper < u[j]:
            u[j] = max(upper, l[j])
            tightened += 1
        if relu and u[j] <= 0:
            stabilised += 1
            continue
        lower = session.minimize([cols[j]], [1.0], deadline=deadline)
        if farkas and lower == -np.inf and session.infeasible():
            return True, tightened, stabilised, True
        if lower > l[j]:
            l[j] = min(lower, u[j])
            tightened += 1
            stabilised += int(relu and l[j] >= 0)
    return True, tightened, stabilised, False


def lp_tighten(blocks, pre, x_lower, x_upper, *, constraints: InputConstraints | None = None,
               deadline: float | None = None, config: SolverConfig = SolverConfig(),
               first_layer: int | None = None) -> LpTightening:
    """Tighten the pre-activation bounds ``pre`` of the unstable neurons by LP, layer by layer
    (see the module docstring), until ``deadline``. Layer 0 is skipped over a plain box (its
    interval bounds are exact there) unless ``first_layer`` says otherwise."""
    t0 = time.monotonic()
    pre = [(np.array(l, dtype=np.float64).reshape(-1), np.array(u, dtype=np.float64).reshape(-1)) for l, u in pre]
    if first_layer is None:
        first_layer = 1 if constraints is None else 0
    lps = tightened = stabilised = done = 0
    for k in range(first_layer, len(pre)):
        if deadline is not None and time.monotonic() >= deadline:
            break
        l, u = pre[k]
        order = _unstable_order(l, u, blocks[k].passthrough)
        if not order.size:
            done += 1
            continue
        model = encode(blocks[:k + 1], pre[:k], (l, u), x_lower, x_upper, np.eye(1, l.size), [0.0],
                       constraints=constraints).relaxed()
        session = LpSession(model, config=config)
        finished, moved, stable, _ = _tighten_columns(session, model.y_index, order, l, u, deadline=deadline, relu=True)
        tightened += moved
        stabilised += stable
        lps += session.lps
        done += int(finished)
        if not finished:
            break
    return LpTightening(pre=pre, lps=lps, tightened=tightened, stabilised=stabilised, layers_done=done,
                        seconds=time.monotonic() - t0)


@dataclass(frozen=True)
class ConditionedTightening:
    """The result of :func:`lp_tighten_conditioned`: ``pre`` and ``out`` (never looser than the
    input), which hold on ``S`` (module docstring) only; ``empty``: an LP with the disjunct's rows is
    infeasible by a checked Farkas certificate, so ``S`` is empty and the disjunct's margin exceeds
    ``tau`` on the whole region; the LPs solved, the bounds that moved (a neuron's lower and upper
    count apart), the neurons that became stable, the layers finished, and the time taken."""

    pre: list
    out: tuple
    empty: bool
    lps: int
    tightened: int
    stabilised: int
    layers_done: int
    seconds: float


def lp_tighten_conditioned(blocks, pre, out_bounds, x_lower, x_upper, A, b, tau: float, *, depth: int = 1,
                           constraints: InputConstraints | None = None, deadline: float | None = None,
                           config: SolverConfig = SolverConfig()) -> ConditionedTightening:
    """Tighten the bounds of the last ``depth`` hidden layers' unstable neurons and of the outputs
    over ``S = {x in region : A f(x) <= b + tau}`` (``tau >= 0``; see the module docstring): each
    layer's LP is the whole network's, with the rows ``A y <= b + tau`` (their right-hand side
    rounded up) and the bounds tightened so far, the widest triangles first; until ``deadline``.
    Every state it stops in is sound on ``S``."""
    t0 = time.monotonic()
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    tau = float(tau)
    if not (np.isfinite(tau) and tau >= 0):
        raise InvalidInputError(f"`tau` must be finite and >= 0 (bounds on S prove margins of at most tau), got {tau!r}")
    if int(depth) < 0:
        raise InvalidInputError(f"`depth` must be >= 0, got {depth!r}")
    pre = [(np.array(l, dtype=np.float64).reshape(-1), np.array(u, dtype=np.float64).reshape(-1)) for l, u in pre]
    out = tuple(np.array(a, dtype=np.float64).reshape(-1) for a in out_bounds)
    rhs = np.nextafter(b + tau, np.inf)  # b + tau rounded up: S only grows
    lps = tightened = stabilised = done = 0
    empty = False
    n_hidden = len(pre)
    for k in list(range(max(n_hidden - int(depth), 0), n_hidden)) + [n_hidden]:  # then the outputs
        if deadline is not None and time.monotonic() >= deadline:
            break
        hidden = k < n_hidden
        l, u = pre[k] if hidden else out
        order = _unstable_order(l, u, blocks[k].passthrough) if hidden else np.arange(l.size)
        if not order.size:
            done += 1
            continue
        model = encode(blocks, pre, out, x_lower, x_upper, A, b, constraints=constraints).relaxed()
        r, c = np.nonzero(A)
        model = add_rows(model, sp.csr_matrix((A[r, c], (r, model.y_index[c])), shape=(A.shape[0], model.n_vars)), rhs)
        session = LpSession(model, config=config)
        cols = model.layers[k][0] if hidden else model.y_index
        finished, moved, stable, empty = _tighten_columns(session, cols, order, l, u, deadline=deadline, relu=hidden,
                                                          farkas=True)
        lps += session.lps
        tightened += moved
        stabilised += stable
        done += int(finished)
        if empty or not finished:
            break
    return ConditionedTightening(pre=pre, out=out, empty=empty, lps=lps, tightened=tightened, stabilised=stabilised,
                                 layers_done=done, seconds=time.monotonic() - t0)


def lp_row_bounds(blocks, pre, out_bounds, x_lower, x_upper, A, b, *, constraints: InputConstraints | None = None,
                  deadline: float | None = None, config: SolverConfig = SolverConfig()) -> np.ndarray:
    """Safe LP lower bounds of ``A_i y - b_i`` (one per row of ``A``) over the network's LP
    relaxation with the bounds ``pre`` and ``out_bounds``; ``-inf`` for rows not reached by the
    deadline."""
    A = np.atleast_2d(np.asarray(A, dtype=np.float64))
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    model = encode(blocks, pre, out_bounds, x_lower, x_upper, A[:1], b[:1], constraints=constraints).relaxed()
    session = LpSession(model, config=config)
    out = np.full(A.shape[0], -np.inf)
    for i in range(A.shape[0]):
        if deadline is not None and time.monotonic() >= deadline:
            break
        nz = np.flatnonzero(A[i])
        out[i] = session.minimize(model.y_index[nz], A[i, nz], -float(b[i]), deadline=deadline)
    return out
